"""Evaluation of learned video representations: retrieval, linear probe, finetuning, clusters, pictures, reports.

``python -m vicc_fast.eval --help`` lists the commands. The engine imports only
:func:`vicc_fast.eval.retrieval.evaluate_phase`, so importing this package stays light.
"""
