# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Counter totals kept inline: a compact hash table of label keys to doubles, with no float object per series."""

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memset

from collections.abc import Mapping, MutableMapping

DEF MIN_BITS = 3
DEF MAX_BITS = 31  # entry numbers are int32

cdef object _MISSING = object()  # pop() without a default


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
    # The high half of a Fibonacci-mixed hash: its top bits place a key, so an index of 2**bits slots uses
    # `hashed >> (32 - bits)`, and a rebuild never needs the key's hash again (nor any Python code).
    return <uint32_t>((<uint64_t>PyObject_Hash(key) * <uint64_t>0x9E3779B97F4A7C15) >> 32)


cdef inline Py_ssize_t _room(int bits) noexcept:
    return ((<Py_ssize_t>1) << bits) * 4 // 5


cdef class Totals:
    """Label key -> float, as a dict of counter totals would hold them, without a float object per series.

    The layout is a dict's (an index of slots pointing into entries kept in insertion order, so that a
    scrape walks the series in the order they were made, as their keys lie in memory), but an entry is a
    key pointer, an inline double and 32 bits of hash: 20 bytes and a 4-byte index slot, where a dict of
    totals costs a 24-byte entry, its index slot and a 24-byte float per series. Keys are tuples of plain
    values (str, int, float, bool, None), so no Python code runs inside the table: each method is one step
    under the GIL, safe for the checkpoint writer's and the renderer's threads to read while the event loop
    writes. keys(), values() and items() return lists, taken at once.
    """

    def __cinit__(self):
        self._rebuild(MIN_BITS)

    def __init__(self, pairs=()):
        self.update(pairs)

    def __dealloc__(self):
        cdef Py_ssize_t entry
        if self.entry_keys != NULL:
            for entry in range(self.filled):
                if self.entry_keys[entry] != NULL:
                    Py_DECREF(<object>self.entry_keys[entry])
        PyMem_Free(self.index)
        PyMem_Free(self.entry_keys)
        PyMem_Free(self.entry_values)
        PyMem_Free(self.entry_hashes)

    cdef int _rebuild(self, int bits) except -1:
        """Move the live entries, in order, into new arrays with an index of 2**bits slots (compacting holes).

        No Python code runs here (no key is hashed again), so no other thread sees the table half-moved.
        """
        if bits > MAX_BITS:
            raise MemoryError("a table of counter totals holds at most 2**31 index slots")
        cdef Py_ssize_t capacity = (<Py_ssize_t>1) << bits, room = _room(bits), entry, count = 0, slot
        cdef Py_ssize_t mask = capacity - 1
        index = <int32_t*>PyMem_Malloc(capacity * sizeof(int32_t))
        keys = <PyObject**>PyMem_Malloc(room * sizeof(PyObject*))
        values = <double*>PyMem_Malloc(room * sizeof(double))
        hashes = <uint32_t*>PyMem_Malloc(room * sizeof(uint32_t))
        if index == NULL or keys == NULL or values == NULL or hashes == NULL:
            PyMem_Free(index)
            PyMem_Free(keys)
            PyMem_Free(values)
            PyMem_Free(hashes)
            raise MemoryError()
        memset(index, 0xFF, capacity * sizeof(int32_t))  # every slot -1: empty
        for entry in range(self.filled):
            if self.entry_keys[entry] == NULL:
                continue
            keys[count] = self.entry_keys[entry]  # the reference moves with it
            values[count] = self.entry_values[entry]
            hashes[count] = self.entry_hashes[entry]
            slot = hashes[count] >> (32 - bits)
            while index[slot] >= 0:
                slot = (slot + 1) & mask
            index[slot] = <int32_t>count
            count += 1
        PyMem_Free(self.index)
        PyMem_Free(self.entry_keys)
        PyMem_Free(self.entry_values)
        PyMem_Free(self.entry_hashes)
        self.index, self.entry_keys, self.entry_values, self.entry_hashes = index, keys, values, hashes
        self.bits, self.room, self.filled, self.used = bits, room, count, count
        return 0

    cdef Py_ssize_t find(self, object key, uint32_t hashed) except -2:
        """The entry holding `key` (hashed by hash_key), or -1; `key` must be a plain key."""
        cdef Py_ssize_t mask = ((<Py_ssize_t>1) << self.bits) - 1
        cdef Py_ssize_t slot = hashed >> (32 - self.bits)
        cdef Py_ssize_t entry
        cdef PyObject* stored
        while True:
            entry = self.index[slot]
            if entry < 0:
                return -1
            if self.entry_hashes[entry] == hashed:
                stored = self.entry_keys[entry]
                if stored == <PyObject*>key or PyObject_RichCompareBool(<object>stored, key, Py_EQ):
                    return entry
            slot = (slot + 1) & mask

    cdef int insert(self, object key, uint32_t hashed, double value) except -1:
        """Add `key`, known to be absent (find() said -1), at `value`."""
        if self.filled == self.room:
            # More than half the room live: double it; otherwise the holes of deleted entries make the room.
            self._rebuild(self.bits + 1 if (self.used + 1) * 2 > self.room else self.bits)
        cdef Py_ssize_t mask = ((<Py_ssize_t>1) << self.bits) - 1
        cdef Py_ssize_t slot = hashed >> (32 - self.bits)
        while self.index[slot] >= 0:
            slot = (slot + 1) & mask
        Py_INCREF(key)
        self.entry_keys[self.filled] = <PyObject*>key
        self.entry_values[self.filled] = value
        self.entry_hashes[self.filled] = hashed
        self.index[slot] = <int32_t>self.filled
        self.filled += 1
        self.used += 1
        return 0

    cdef void remove(self, Py_ssize_t entry) noexcept:
        """Delete a live entry: it becomes a hole, and the index slots after its own that probed past it shift
        back (no tombstones)."""
        cdef Py_ssize_t mask = ((<Py_ssize_t>1) << self.bits) - 1
        cdef Py_ssize_t hole = self.entry_hashes[entry] >> (32 - self.bits), later, home
        cdef PyObject* gone = self.entry_keys[entry]
        while self.index[hole] != entry:
            hole = (hole + 1) & mask
        self.entry_keys[entry] = NULL
        later = hole
        while True:
            later = (later + 1) & mask
            if self.index[later] < 0:
                break
            home = self.entry_hashes[self.index[later]] >> (32 - self.bits)
            # The slot at `later` may move back into the hole unless the hole lies before its home.
            if ((later - home) & mask) >= ((later - hole) & mask):
                self.index[hole] = self.index[later]
                hole = later
        self.index[hole] = -1
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
        cdef Py_ssize_t entry = self._lookup(key)
        if entry < 0:
            raise KeyError(key)
        return self.entry_values[entry]

    def get(self, key, default=None):
        cdef Py_ssize_t entry = self._lookup(key)
        return default if entry < 0 else self.entry_values[entry]

    cdef int _set(self, object key, object value) except -1:
        cdef double number = value
        if not plain_key(key):
            raise TypeError(f"a series key must be a tuple of str, int, float, bool or None, not {key!r}")
        cdef uint32_t hashed = hash_key(key)
        cdef Py_ssize_t entry = self.find(key, hashed)
        if entry >= 0:
            self.entry_values[entry] = number
        else:
            self.insert(key, hashed, number)
        return 0

    def __setitem__(self, key, value):
        self._set(key, value)

    def __delitem__(self, key):
        self.pop(key)

    def pop(self, key, default=_MISSING):
        cdef Py_ssize_t entry = self._lookup(key)
        if entry < 0:
            if default is not _MISSING:
                return default
            raise KeyError(key)
        value = self.entry_values[entry]
        self.remove(entry)
        return value

    def popitem(self):
        """The newest series and its total, removed (as a dict's popitem)."""
        cdef Py_ssize_t entry = self.filled - 1
        while entry >= 0 and self.entry_keys[entry] == NULL:
            entry -= 1
        if entry < 0:
            raise KeyError("popitem(): the table is empty")
        key, value = <object>self.entry_keys[entry], self.entry_values[entry]
        self.remove(entry)
        return key, value

    def setdefault(self, key, default=0.0):
        cdef Py_ssize_t entry = self._lookup(key)
        if entry >= 0:
            return self.entry_values[entry]
        self._set(key, default)
        return float(default)

    def copy(self):
        return Totals(self.items())

    def clear(self):
        cdef PyObject** keys = self.entry_keys
        cdef Py_ssize_t filled = self.filled, entry
        self.filled = 0  # the rebuild moves nothing: the old keys are released after
        self.entry_keys = NULL
        self._rebuild(MIN_BITS)
        for entry in range(filled):
            if keys[entry] != NULL:
                Py_DECREF(<object>keys[entry])
        PyMem_Free(keys)

    def update(self, pairs=()):
        if isinstance(pairs, (Totals, Mapping)):
            pairs = pairs.items()
        for key, value in pairs:
            self._set(key, value)

    cdef list _keys(self):
        # Allocating the list may run the collector, and with it Python code: the table may change meanwhile,
        # so the list is filled (no allocation, one step) only once it has room for every key.
        cdef Py_ssize_t entry, count
        cdef list found
        while True:
            count = self.used
            found = PyList_New(count)
            if count == self.used:
                break
        count = 0
        for entry in range(self.filled):
            if self.entry_keys[entry] != NULL:
                Py_INCREF(<object>self.entry_keys[entry])
                PyList_SET_ITEM(found, count, <object>self.entry_keys[entry])
                count += 1
        return found

    def keys(self):
        return self._keys()

    def __iter__(self):
        return iter(self._keys())

    def values(self):
        return [value for _, value in self.items()]

    def items(self):
        cdef Py_ssize_t entry, count = 0
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
        for entry in range(self.filled):
            if self.entry_keys[entry] != NULL:
                values[count] = self.entry_values[entry]
                count += 1
        try:
            return [(keys[entry], values[entry]) for entry in range(count)]
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
