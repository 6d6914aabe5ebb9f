"""The compiled apply loop, built where a C compiler is available; without one the pure-Python loop is used."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [Extension("aggregator._fastapply", ["aggregator/_fastapply.pyx"])],
    compiler_directives={"language_level": "3"},
    quiet=True,
)
for extension in extensions:
    # A failed compile is a warning, and the package installs with the pure-Python loop.
    extension.optional = True
setup(ext_modules=extensions)
