# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Counter totals kept inline: one open-addressing table of label keys to doubles, with no float object per series."""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

from collections.abc import Mapping, MutableMapping

DEF MIN_BITS = 3


cdef bint plain_key(object key) noexcept:
    """A tuple of str, int, float, bool or None: hashing and comparing it runs no Python code."""
    if type(key) is not tuple:
        return False
    for item in <tuple>key:
        if type(item) is not str and type(item) is not int and type(item) is not float and item is not None \
                and type(item) is not bool:
            return False
    return True


cdef uint32_t hash_key(object key) except? 0:
    # The high half of a Fibonacci-mixed hash: its top bits place a key, so a table of 2**bits slots uses
    # `hashed >> (32 - bits)`, and growing never needs the key's hash again (nor any Python code).
    return <uint32_t>((<uint64_t>PyObject_Hash(key) * <uint64_t>0x9E3779B97F4A7C15) >> 32)


cdef class Totals:
    """Label key -> float, as a dict of counter totals would hold them, in a fifth of the memory per series.

    A dict of totals costs a 24-byte entry, a share of its index and a 24-byte float per series; here a
    series is a key pointer, an inline double and 32 bits of hash (20 bytes a slot, at most 0.8 full).
    Keys are tuples of plain values (str, int, float, bool, None), so no Python code runs inside the table:
    every method is one step under the GIL, safe for the checkpoint writer's thread to read while the
    event loop writes. keys(), values() and items() return lists, taken at once.
    """

    def __cinit__(self):
        self._allocate(MIN_BITS)

    def __init__(self, pairs=()):
        self.update(pairs)

    def __dealloc__(self):
        self._release(self.slot_keys, self.capacity)
        PyMem_Free(self.slot_values)
        PyMem_Free(self.slot_hashes)

    cdef void _release(self, PyObject** keys, Py_ssize_t capacity) noexcept:
        cdef Py_ssize_t slot
        if keys == NULL:
            return
        for slot in range(capacity):
            if keys[slot] != NULL:
                Py_DECREF(<object>keys[slot])
        PyMem_Free(keys)

    cdef int _allocate(self, int bits) except -1:
        cdef Py_ssize_t capacity = (<Py_ssize_t>1) << bits
        keys = <PyObject**>PyMem_Malloc(capacity * sizeof(PyObject*))
        values = <double*>PyMem_Malloc(capacity * sizeof(double))
        hashes = <uint32_t*>PyMem_Malloc(capacity * sizeof(uint32_t))
        if keys == NULL or values == NULL or hashes == NULL:
            PyMem_Free(keys)
            PyMem_Free(values)
            PyMem_Free(hashes)
            raise MemoryError()
        memset(keys, 0, capacity * sizeof(PyObject*))
        self.slot_keys, self.slot_values, self.slot_hashes = keys, values, hashes
        self.capacity, self.bits, self.used = capacity, bits, 0
        return 0

    cdef Py_ssize_t find(self, object key, uint32_t hashed) except -2:
        """The slot holding `key` (hashed by hash_key), or -1; `key` must be a plain key."""
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t slot = hashed >> (32 - self.bits)
        cdef PyObject* stored
        cdef int equal
        while True:
            stored = self.slot_keys[slot]
            if stored == NULL:
                return -1
            if self.slot_hashes[slot] == hashed:
                if stored == <PyObject*>key:
                    return slot
                equal = PyObject_RichCompareBool(<object>stored, key, Py_EQ)
                if equal < 0:
                    return -2
                if equal:
                    return slot
            slot = (slot + 1) & mask

    cdef int insert(self, object key, uint32_t hashed, double value) except -1:
        """Add `key`, known to be absent (find() said -1), at `value`."""
        if (self.used + 1) * 5 > self.capacity * 4:
            self.grow()
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t slot = hashed >> (32 - self.bits)
        while self.slot_keys[slot] != NULL:
            slot = (slot + 1) & mask
        Py_INCREF(key)
        self.slot_keys[slot] = <PyObject*>key
        self.slot_values[slot] = value
        self.slot_hashes[slot] = hashed
        self.used += 1
        return 0

    cdef int grow(self) except -1:
        # No Python code runs here (no key is hashed again), so no other thread sees the table half-moved.
        cdef PyObject** old_keys = self.slot_keys
        cdef double* old_values = self.slot_values
        cdef uint32_t* old_hashes = self.slot_hashes
        cdef Py_ssize_t old_capacity = self.capacity, old_used = self.used, slot, target, mask
        if self.bits >= 32:  # a slot is placed by 32 bits of hash
            raise MemoryError("a table of counter totals holds at most 2**32 slots")
        self._allocate(self.bits + 1)
        mask = self.capacity - 1
        for slot in range(old_capacity):
            if old_keys[slot] == NULL:
                continue
            target = old_hashes[slot] >> (32 - self.bits)
            while self.slot_keys[target] != NULL:
                target = (target + 1) & mask
            self.slot_keys[target] = old_keys[slot]  # the reference moves with it
            self.slot_values[target] = old_values[slot]
            self.slot_hashes[target] = old_hashes[slot]
        self.used = old_used
        PyMem_Free(old_keys)
        PyMem_Free(old_values)
        PyMem_Free(old_hashes)
        return 0

    cdef void remove(self, Py_ssize_t slot) noexcept:
        """Empty `slot`, shifting back the entries after it that probed past it (no tombstones)."""
        cdef PyObject* gone = self.slot_keys[slot]
        cdef Py_ssize_t mask = self.capacity - 1, hole = slot, later = slot, home
        while True:
            later = (later + 1) & mask
            if self.slot_keys[later] == NULL:
                break
            home = self.slot_hashes[later] >> (32 - self.bits)
            # The entry at `later` may move back into the hole if the hole is not before its home.
            if ((later - home) & mask) >= ((later - hole) & mask):
                self.slot_keys[hole] = self.slot_keys[later]
                self.slot_values[hole] = self.slot_values[later]
                self.slot_hashes[hole] = self.slot_hashes[later]
                hole = later
        self.slot_keys[hole] = NULL
        self.used -= 1
        Py_DECREF(<object>gone)  # last: a key's release never sees the table half-changed

    cdef Py_ssize_t _lookup(self, object key) except -2:
        if not plain_key(key):
            return -1  # never stored: only plain keys go in
        return self.find(key, hash_key(key))

    def __len__(self):
        return self.used

    def __contains__(self, key):
        return self._lookup(key) >= 0

    def __getitem__(self, key):
        cdef Py_ssize_t slot = self._lookup(key)
        if slot < 0:
            raise KeyError(key)
        return self.slot_values[slot]

    def get(self, key, default=None):
        cdef Py_ssize_t slot = self._lookup(key)
        return default if slot < 0 else self.slot_values[slot]

    cdef int _set(self, object key, object value) except -1:
        cdef double number = value
        if not plain_key(key):
            raise TypeError(f"a series key must be a tuple of str, int, float, bool or None, not {key!r}")
        cdef uint32_t hashed = hash_key(key)
        cdef Py_ssize_t slot = self.find(key, hashed)
        if slot >= 0:
            self.slot_values[slot] = number
        else:
            self.insert(key, hashed, number)
        return 0

    def __setitem__(self, key, value):
        self._set(key, value)

    def __delitem__(self, key):
        cdef Py_ssize_t slot = self._lookup(key)
        if slot < 0:
            raise KeyError(key)
        self.remove(slot)

    def pop(self, key, *default):
        cdef Py_ssize_t slot = self._lookup(key)
        if slot < 0:
            if default:
                return default[0]
            raise KeyError(key)
        value = self.slot_values[slot]
        self.remove(slot)
        return value

    def clear(self):
        cdef PyObject** keys = self.slot_keys
        cdef Py_ssize_t capacity = self.capacity
        PyMem_Free(self.slot_values)
        PyMem_Free(self.slot_hashes)
        self.slot_keys = NULL
        self.slot_values = NULL
        self.slot_hashes = NULL
        self._allocate(MIN_BITS)
        self._release(keys, capacity)

    def update(self, pairs=()):
        if isinstance(pairs, (Totals, Mapping)):
            pairs = pairs.items()
        for key, value in pairs:
            self._set(key, value)

    cdef list _keys(self):
        # Allocating the list may run the collector, and with it Python code: the table may change meanwhile,
        # so the list is filled (no allocation, one step) only once it has room for every key.
        cdef Py_ssize_t slot, count
        cdef list found
        while True:
            count = self.used
            found = PyList_New(count)
            if count == self.used:
                break
        count = 0
        for slot in range(self.capacity):
            if self.slot_keys[slot] != NULL:
                Py_INCREF(<object>self.slot_keys[slot])
                PyList_SET_ITEM(found, count, <object>self.slot_keys[slot])
                count += 1
        return found

    def keys(self):
        return self._keys()

    def __iter__(self):
        return iter(self._keys())

    def values(self):
        return [value for _, value in self.items()]

    def items(self):
        cdef Py_ssize_t slot, count = 0
        cdef list keys
        cdef double* values
        # Keys and values copied in one step (a raw buffer cannot run the collector), then turned into pairs.
        while True:
            keys = self._keys()
            values = <double*>PyMem_Malloc((len(keys) or 1) * sizeof(double))
            if values == NULL:
                raise MemoryError()
            if len(keys) == self.used:
                break
            PyMem_Free(values)
        for slot in range(self.capacity):
            if self.slot_keys[slot] != NULL:
                values[count] = self.slot_values[slot]
                count += 1
        try:
            return [(keys[slot], values[slot]) for slot in range(count)]
        finally:
            PyMem_Free(values)

    def __eq__(self, other):
        if not isinstance(other, (Totals, Mapping)):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __reduce__(self):
        return (Totals, (self.items(),))

    def __repr__(self):
        return f"Totals({dict(self.items())!r})"


MutableMapping.register(Totals)
