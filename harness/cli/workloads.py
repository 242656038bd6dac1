"""`cbs workloads`: the registered workloads with metric, direction and default target."""


def add_arguments(parser):
    pass


def run(args) -> int:
    from harness.engine.workloads import WORKLOADS

    print(f"{'workload':28} {'metric':14} {'direction':9} {'target':>7}  description")
    for w in WORKLOADS.values():
        print(f"{w.name:28} {w.metric:14} {w.direction:9} {w.target:>7}  {w.description}")
    print("also: <mnist|fashion_mnist>_fc<width>x<depth> (e.g. mnist_fc128x3), and path/to/file.py:name")
    return 0
