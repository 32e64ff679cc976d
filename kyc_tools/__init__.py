"""kyc-edge tools: what a workstation runs, never a counter box.

eval (accuracy), bench (speed), fuzz, the fleet manager's verbs and the operator's verdict listener.
Imports `device`; `device` never imports this package (tests/test_import_graph.py).
"""
