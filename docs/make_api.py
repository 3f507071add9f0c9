"""Regenerate docs/api.md from the code: every public name, its signature and the first
paragraph of its docstring. Run: python docs/make_api.py > docs/api.md"""
import importlib
import importlib.util
import inspect
import re

MODULES = ["convkern", "convkern.functional", "convkern.nn", "convkern.optim", "convkern.optim.lr_scheduler",
           "convkern.amp", "convkern.data", "convkern.models", "convkern.distributed", "convkern.cuda", "convkern.torch"]
OPTIONAL = {"convkern.torch": "torch"}  # module: the library it needs, which convkern does not install


def import_module(name):
    """The module, or None when it is optional and its library is not installed."""
    if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None:
        return None
    return importlib.import_module(name)


def public_names(mod):
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, o in vars(mod).items() if not n.startswith("_")
                 and getattr(o, "__module__", None) == mod.__name__ and (inspect.isclass(o) or inspect.isfunction(o))]
    return [n for n in names if not inspect.ismodule(getattr(mod, n)) and not n.startswith("__")]


def signature(obj):
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    sig = re.sub(r"<class 'numpy\.(\w+)'>", r"np.\1", sig)
    sig = re.sub(r"<class 'convkern\.[\w.]+\.(\w+)'>", r"\1", sig)
    return sig.replace("|", "\\|")


def summary_line(obj):
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


def main():
    print("# API reference\n")
    print("Every public name, generated from the code by `python docs/make_api.py > docs/api.md`;")
    print("semantics and formulas are in docs/ops.md, data in docs/data.md.")
    for name in MODULES:
        mod = import_module(name)
        print(f"\n## `{name}`\n")
        if mod is None:
            print(f"Needs `{OPTIONAL[name]}`, which was not installed when this file was generated.")
            continue
        print("| name | signature | what it does |\n|---|---|---|")
        for n in public_names(mod):
            obj = getattr(mod, n)
            if isinstance(obj, (str, tuple, dict)):
                continue
            print(f"| `{n}` | `{signature(obj)}` | {summary_line(obj)} |")


if __name__ == "__main__":
    main()
