r"""Runs ablation notebooks top to bottom at their full setting, from the repository root (the heavy evidence
behind docs/ablations.md; the test suite runs them at the small setting):

    python experiments/run_ablations.py                      # every notebooks/ablation_*.ipynb
    python experiments/run_ablations.py ablation_goose_parts # one of them

Each notebook writes its table, conclusion and plot into docs/ablations/; the executed copies (with outputs)
go to --out, so the committed notebooks stay clean.
"""

import argparse
import os
import pathlib
import time

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: every ablation_*)")
    parser.add_argument("--out", default="workdir/ablations", help="where the executed notebooks go")
    parser.add_argument("--setting", default="full", choices=("ci", "full"))
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in (REPO / "notebooks").glob("ablation_*.ipynb"))
    os.environ |= {"ABLATION_SETTING": args.setting, "MPLBACKEND": "Agg"}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        began = time.perf_counter()
        notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        client = NotebookClient(
            notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        )
        client.execute()
        nbformat.write(notebook, out / f"{name}.ipynb")
        print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
