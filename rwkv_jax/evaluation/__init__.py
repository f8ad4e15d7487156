"""Evaluation of any checkpoint kind: state-cached scoring (``scoring``), loading (``loading``) and the
lm-evaluation-harness adapter (``lm_eval_adapter``, needs the ``[eval]`` extra)."""
