"""The compiled apply loop and exposition, built where a C compiler is available; else the pure-Python paths run."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [
        Extension("aggregator._totals", ["aggregator/_totals.pyx"]),
        Extension("aggregator._fastapply", ["aggregator/_fastapply.pyx"]),
        Extension("aggregator._fastrender", ["aggregator/_fastrender.pyx"]),
    ],
    compiler_directives={"language_level": "3"},
    quiet=True,
)
for extension in extensions:
    # A failed compile is a warning, and the package installs with the pure-Python loop.
    extension.optional = True
setup(ext_modules=extensions)
