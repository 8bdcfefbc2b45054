"""The README's example of the ops in another retrieval stack (examples/colpali_style.py) runs
and finds the pages its queries were drawn from."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def test_colpali_style_example_runs():
    path = os.path.join(os.path.dirname(HERE), "examples", "colpali_style.py")
    spec = importlib.util.spec_from_file_location("colpali_style", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exact, ids, target = mod.main()
    assert (exact.argmax(1) == target).float().mean() >= 0.9
    assert (ids == target[:, None]).any(1).float().mean() >= 0.9
