# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled exposition: counter and gauge sample lines written straight into bytes (see aggregator.exposition)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.math cimport isfinite, isnan
from libc.string cimport memcpy, strlen

from aggregator._totals cimport Totals, hash_key, plain_key

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    char* PyOS_double_to_string(double value, char format_code, int precision, int flags, int* kind) except NULL
    int Py_DTSF_ADD_DOT_0


cdef struct Buffer:
    char* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _reserve(Buffer* buffer, Py_ssize_t more) except -1:
    cdef Py_ssize_t wanted = buffer.size + more
    cdef Py_ssize_t capacity = buffer.capacity
    cdef char* grown
    if wanted <= capacity:
        return 0
    while capacity < wanted:
        capacity = capacity * 2 if capacity else 65536
    grown = <char*>PyMem_Realloc(buffer.data, capacity)
    if grown == NULL:
        raise MemoryError()
    buffer.data = grown
    buffer.capacity = capacity
    return 0


cdef inline int _put(Buffer* buffer, const char* text, Py_ssize_t size) except -1:
    _reserve(buffer, size)
    memcpy(buffer.data + buffer.size, text, size)
    buffer.size += size
    return 0


cdef int _put_label_value(Buffer* buffer, object value) except -1:
    """A label value as the text format escapes it: backslash, newline and double quote."""
    cdef Py_ssize_t size, index
    cdef const char* text = PyUnicode_AsUTF8AndSize(value, &size)
    cdef char byte
    _reserve(buffer, 2 * size)
    for index in range(size):
        byte = text[index]
        if byte == b'\\':
            buffer.data[buffer.size] = b'\\'
            buffer.data[buffer.size + 1] = b'\\'
            buffer.size += 2
        elif byte == b'\n':
            buffer.data[buffer.size] = b'\\'
            buffer.data[buffer.size + 1] = b'n'
            buffer.size += 2
        elif byte == b'"':
            buffer.data[buffer.size] = b'\\'
            buffer.data[buffer.size + 1] = b'"'
            buffer.size += 2
        else:
            buffer.data[buffer.size] = byte
            buffer.size += 1
    return 0


cdef int _put_number(Buffer* buffer, double value) except -1:
    """repr(float) for finite values (what the pure renderer writes), NaN, +Inf and -Inf otherwise."""
    cdef char* text
    if isfinite(value):
        text = PyOS_double_to_string(value, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            _put(buffer, text, strlen(text))
        finally:
            PyMem_Free(text)
    elif isnan(value):
        _put(buffer, b"NaN", 3)
    elif value > 0:
        _put(buffer, b"+Inf", 4)
    else:
        _put(buffer, b"-Inf", 4)
    return 0


def render_plain(
    bytes name,
    tuple label_heads,
    list keys,
    Py_ssize_t start,
    Py_ssize_t end,
    object series,
    bint gauge,
    dict exemplars,
    object exemplar_text,
):
    """The sample lines of keys[start:end] of a counter or gauge family, as the pure renderer writes them.

    `label_heads` are the bytes before each label's value (`{name="` for the first, `",name="` after);
    keys no longer in `series` (a dict, or a counter's Totals) are skipped; `exemplar_text` gives the suffix of
    a key in `exemplars`.
    """
    cdef Buffer buffer
    cdef Py_ssize_t n_labels = len(label_heads)
    cdef Py_ssize_t index, label
    cdef PyObject* found
    cdef Totals totals = series if type(series) is Totals else None
    cdef dict plain = None if totals is not None else <dict?>series
    cdef Py_ssize_t entry
    cdef object key, value, head, suffix
    cdef const char* suffix_text
    cdef Py_ssize_t suffix_size
    buffer.data = NULL
    buffer.size = 0
    buffer.capacity = 0
    try:
        for index in range(start, min(end, len(keys))):
            key = keys[index]
            if totals is not None:
                entry = totals.find(key, hash_key(key)) if plain_key(key) else -1
                if entry < 0:
                    continue
                value = totals.entry_values[entry]
            else:
                found = PyDict_GetItem(plain, key)
                if found == NULL or <object>found is None:
                    continue
                value = <object>found
            if type(key) is not tuple:
                raise TypeError(f"a series key of type {type(key).__name__}, not a tuple")
            if PyTuple_GET_SIZE(key) != n_labels:
                raise ValueError(f"a key of {len(key)} values in a family of {n_labels} labels")
            if gauge and (type(value) is not tuple or PyTuple_GET_SIZE(value) < 1):
                raise TypeError(f"a gauge series value {value!r}, not a (value, time) tuple")
            _put(&buffer, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            for label in range(n_labels):
                head = label_heads[label]
                _put(&buffer, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
                _put_label_value(&buffer, (<tuple>key)[label])
            if n_labels:
                _put(&buffer, b'"} ', 3)
            else:
                _put(&buffer, b" ", 1)
            _put_number(&buffer, <double>((<tuple>value)[0] if gauge else value))
            if exemplars and key in exemplars:
                suffix = exemplar_text(exemplars[key])
                suffix_text = PyUnicode_AsUTF8AndSize(suffix, &suffix_size)
                _put(&buffer, suffix_text, suffix_size)
            _put(&buffer, b"\n", 1)
        return PyBytes_FromStringAndSize(buffer.data, buffer.size)
    finally:
        PyMem_Free(buffer.data)
