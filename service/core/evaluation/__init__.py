"""Evaluation of trained models: metrics checked against scikit-learn, and the report (docs/evaluation.md)."""
