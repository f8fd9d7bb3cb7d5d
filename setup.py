"""Only what pyproject.toml cannot say: install `qpass-lm-eval.pth` next to the packages (in
wheels and in editable installs), which registers qpass's lm-eval model at interpreter start
(see qpass_lm_eval_hook.py). Everything else is in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "qpass-lm-eval.pth"
PTH_LINE = "import qpass_lm_eval_hook; qpass_lm_eval_hook.install()\n"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / PTH
        target.write_text(PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        return super().get_outputs(*args, **kwargs) + [str(Path(self.build_lib) / PTH)]


cmdclass = {"build_py": BuildPyWithPth}

try:  # editable installs write their own wheel: add the .pth file to it
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithPth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            inner = super()._select_strategy(*args, **kwargs)

            class WithPth:
                def __enter__(self):
                    inner.__enter__()
                    return self

                def __exit__(self, *exc):
                    return inner.__exit__(*exc)

                def __call__(self, wheel, files, mapping):
                    inner(wheel, files, mapping)
                    wheel.writestr(PTH, PTH_LINE)

            return WithPth()

    cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # an old setuptools without PEP 660 support
    pass

setup(cmdclass=cmdclass)
