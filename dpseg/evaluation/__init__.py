"""Evaluation: confusion-matrix metrics, test-time inference protocols, and the ``dpseg eval`` command."""
