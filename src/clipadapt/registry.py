"""Names the command line lists in its help, kept free of torch so that `clipadapt --help` starts fast.

`clipadapt.methods.METHODS` is the registry itself; tests/test_cli.py checks that this list names
the same methods.
"""

METHOD_NAMES = ("zeroshot", "clip_adapter", "coop", "mma", "rmadapter", "rmma", "mma_attn")
PROTOCOL_NAMES = ("base2novel", "fewshot", "dg")

