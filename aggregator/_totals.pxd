from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint32_t


cdef class Totals:
    # The index: 2**bits slots, each -1 (empty) or the number of an entry; at most 0.8 of them used.
    cdef int32_t* index
    cdef int bits
    # The entries, in insertion order: `filled` of `room` made, `used` of them live (a deleted one's key is NULL).
    cdef PyObject** entry_keys
    cdef double* entry_values
    cdef uint32_t* entry_hashes
    cdef Py_ssize_t room
    cdef Py_ssize_t filled
    cdef Py_ssize_t used

    cdef Py_ssize_t find(self, object key, uint32_t hashed) except -2
    cdef int insert(self, object key, uint32_t hashed, double value) except -1
    cdef int _rebuild(self, int bits) except -1
    cdef void remove(self, Py_ssize_t entry) noexcept
    cdef Py_ssize_t _lookup(self, object key) except -2
    cdef list _keys(self)
    cdef int _set(self, object key, object value) except -1


cdef uint32_t hash_key(object key) except? 0
cdef bint plain_key(object key) noexcept
