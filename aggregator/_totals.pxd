from cpython.object cimport PyObject
from libc.stdint cimport uint32_t


cdef class Totals:
    cdef PyObject** slot_keys
    cdef double* slot_values
    cdef uint32_t* slot_hashes
    cdef Py_ssize_t capacity
    cdef Py_ssize_t used
    cdef int bits

    cdef Py_ssize_t find(self, object key, uint32_t hashed) except -2
    cdef int insert(self, object key, uint32_t hashed, double value) except -1
    cdef int grow(self) except -1
    cdef void remove(self, Py_ssize_t slot) noexcept
    cdef void _release(self, PyObject** keys, Py_ssize_t capacity) noexcept
    cdef int _allocate(self, int bits) except -1
    cdef Py_ssize_t _lookup(self, object key) except -2
    cdef list _keys(self)
    cdef int _set(self, object key, object value) except -1


cdef uint32_t hash_key(object key) except? 0
cdef bint plain_key(object key) noexcept
