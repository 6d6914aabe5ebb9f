# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled per-event paths: the apply loop (aggregator.compiler), label check, tally, shared and untracked keys."""

from cpython.array cimport array
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.string cimport memcmp
from libc.stdint cimport uint32_t

from aggregator._totals cimport Totals, hash_key, plain_key

cdef extern from "Python.h":
    ctypedef unsigned char Py_UCS1
    bint PyUnicode_IS_ASCII(object text)
    int PyUnicode_KIND(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)
    Py_UCS1* PyUnicode_1BYTE_DATA(object text)
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
        const char* doc
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int T_OBJECT_EX
    ctypedef struct PyFloatObject:
        double ob_fval
    bint _is_exact_float "PyFloat_CheckExact"(PyObject* value)
    Py_ssize_t _references "Py_REFCNT"(PyObject* value)
    void PyObject_GC_UnTrack(void* op)
    bint PyObject_IS_GC(object obj)

DEF MAX_LABELS = 16
DEF MAX_BOUNDS = 64

cdef enum Kind:
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    PYTHON = 3


cdef Py_ssize_t _offset(object event_type, str name) except -2:
    """Where field `name` of a msgspec Struct is stored in its instances; -1 if it is not a plain slot."""
    descriptor = None
    for klass in event_type.__mro__:
        if name in klass.__dict__:
            descriptor = klass.__dict__[name]
            break
    if descriptor is None or type(descriptor).__name__ != "member_descriptor":
        return -1
    cdef PyMemberDef* member = (<PyMemberDescrObject*>descriptor).d_member
    if member.type != T_OBJECT_EX:
        return -1
    return member.offset


cdef inline object _field(object event, Py_ssize_t offset):
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>event) + offset))[0]
    if value == NULL:
        raise AttributeError("an event field is not set")
    return <object>value


# (event type, field name) -> where the type stores the field (-1: not a plain slot).
cdef dict _named_offsets = {}


cdef struct _Recent:
    # The type of the event read before, and where that type keeps the field: a loop over a message's events
    # looks the offset up again only when the type changes.
    PyObject* event_type
    Py_ssize_t offset


cdef inline object _named(object event, _Recent* recent, str name):
    """event.<name>, read from its slot where the type keeps it in one."""
    cdef object event_type = type(event)
    if <PyObject*>event_type != recent.event_type:
        offset = _named_offsets.get((event_type, name))
        if offset is None:
            offset = _named_offsets[(event_type, name)] = _offset(event_type, name)
        recent.event_type = <PyObject*>event_type
        recent.offset = offset
    if recent.offset < 0:
        return getattr(event, name)
    return _field(event, recent.offset)


cdef class Update:
    """One metric spec bound to its family, as data the loop reads without Python calls."""

    cdef int kind
    cdef object family
    cdef dict series  # gauges' and histograms'
    cdef Totals totals  # counters'
    cdef Py_ssize_t n_fields
    cdef Py_ssize_t fields[MAX_LABELS]
    cdef tuple derived
    # Per derived label: the offset of the field a sign word reads, its (below zero, otherwise) words; -1: a call
    cdef Py_ssize_t derived_offsets[MAX_LABELS]
    cdef tuple derived_words
    cdef Py_ssize_t value_offset  # -1: count 1; -2: value_fn; -3: product of value_fields; -4: magnitude of one
    cdef Py_ssize_t value_fields[2]
    cdef object value_fn
    cdef Py_ssize_t condition_offset  # -1: none; -2: condition_fn
    cdef object condition_fn
    cdef object allowed
    cdef bint negate
    cdef object python_update
    cdef Py_ssize_t n_bounds
    cdef double bounds[MAX_BOUNDS]
    cdef dict updated
    cdef long generation
    cdef set dirty
    cdef object writing
    cdef dict frozen
    # Counters: the family's tables of shared label values, so that a new series is admitted here in C.
    cdef list shared
    cdef Py_ssize_t share_limit

    cdef void refresh(self, long generation):
        # Commit points (freeze) and their ends (thaw) replace these between apply calls, never during one.
        self.generation = generation
        self.dirty = self.family.dirty
        self.writing = self.family.writing
        self.frozen = self.family.frozen

    cdef void mark(self, object key) except *:
        # Family.touch in C: while a commit is written, the first change to a series it writes keeps the
        # series' committed row (copy on write).
        if self.writing is not None and key in <set>self.writing and key not in self.frozen:
            self.frozen[key] = self.family.row(key)
        self.dirty.add(key)


def make_update(spec, family, event_type, python_update):
    """The compiled form of `spec` for events of `event_type`; it falls back to `python_update` where it must."""
    cdef Update update = Update()
    update.family = family
    if type(family.series) is Totals:
        update.totals = family.series
    else:
        update.series = family.series
    update.python_update = python_update
    update.generation = -1
    kind = str(spec.type)
    labels = list(spec.labels.values())
    names = [source for source in labels if isinstance(source, str)]
    update.derived = tuple(source for source in labels if not isinstance(source, str))
    offsets = [_offset(event_type, name) for name in names]
    if (
        spec.cumulative_key is not None
        or getattr(spec, "exclusive_prefix", 0)
        or -1 in offsets
        or len(names) > MAX_LABELS
        or len(update.derived) > MAX_LABELS
        or (kind == "histogram" and len(family.bounds) > MAX_BOUNDS)
    ):
        update.kind = PYTHON
        return update
    update.n_fields = len(names)
    for index, offset in enumerate(offsets):
        update.fields[index] = offset
    words = []
    for index, source in enumerate(update.derived):
        update.derived_offsets[index] = -1
        if getattr(source, "op", None) == "sign":
            update.derived_offsets[index] = _offset(event_type, source.fields[0])
        words.append(tuple(source.words) if update.derived_offsets[index] >= 0 else None)
    update.derived_words = tuple(words)
    if spec.value is None:
        update.value_offset = -1
    elif isinstance(spec.value, str):
        update.value_offset = _offset(event_type, spec.value)
        if update.value_offset < 0:
            update.kind = PYTHON
            return update
    else:
        update.value_offset = -2
        update.value_fn = spec.value
        op = getattr(spec.value, "op", None)
        if op in ("product", "magnitude") and len(spec.value.fields) == (2 if op == "product" else 1):
            value_offsets = [_offset(event_type, name) for name in spec.value.fields]
            if -1 not in value_offsets:
                update.value_offset = -3 if op == "product" else -4
                for index, offset in enumerate(value_offsets):
                    update.value_fields[index] = offset
    condition = spec.when
    if condition is None:
        update.condition_offset = -1
    else:
        update.condition_offset = _offset(event_type, condition.field)
        if update.condition_offset < 0:
            update.kind = PYTHON
            return update
        update.allowed = condition.values
        update.negate = condition.negate
    if kind == "counter":
        update.kind = COUNTER if update.totals is not None else PYTHON
        from aggregator.store import SHARED_VALUES_PER_LABEL

        update.shared = family._shared
        update.share_limit = SHARED_VALUES_PER_LABEL
    elif kind == "gauge":
        update.kind = GAUGE
        update.updated = family.updated
        if update.value_offset == -1:
            update.kind = PYTHON
    else:
        update.kind = HISTOGRAM
        update.n_bounds = len(family.bounds)
        for index, bound in enumerate(family.bounds):
            update.bounds[index] = bound
        if update.value_offset == -1:
            update.kind = PYTHON
    return update


cdef long _generation = 0


cdef inline object _key(Update update, object event):
    cdef Py_ssize_t n = update.n_fields
    cdef Py_ssize_t n_derived = len(update.derived)
    cdef tuple key = PyTuple_New(n + n_derived)
    cdef Py_ssize_t index
    cdef object value
    for index in range(n):
        value = _field(event, update.fields[index])
        Py_INCREF(value)
        PyTuple_SET_ITEM(key, index, value)
    cdef object field
    for index in range(n_derived):
        if update.derived_offsets[index] >= 0:
            field = _field(event, update.derived_offsets[index])
            value = (<tuple>update.derived_words[index])[0 if field is not None and field < 0 else 1]
        else:
            value = update.derived[index](event)
        Py_INCREF(value)
        PyTuple_SET_ITEM(key, n + index, value)
    return key


cdef inline Py_ssize_t _bucket(Update update, double sample) noexcept:
    # bisect_left: the first bound >= sample (Prometheus buckets are upper-inclusive).
    cdef Py_ssize_t low = 0
    cdef Py_ssize_t high = update.n_bounds
    cdef Py_ssize_t middle
    while low < high:
        middle = (low + high) >> 1
        if update.bounds[middle] < sample:
            low = middle + 1
        else:
            high = middle
    return low


def apply(list events, dict plan, double now):
    """Apply every event's updates (plan: event type -> tuple of Update); events of `metric` kind go elsewhere."""
    global _generation
    _generation += 1
    cdef long generation = _generation
    cdef Update update
    cdef Totals totals
    cdef uint32_t hashed
    cdef Py_ssize_t entry
    cdef object event, key, sample, other, check, current_obj
    cdef PyObject* current
    cdef tuple updates
    cdef double amount, value, event_ts
    cdef array counts
    cdef Py_ssize_t index
    cdef _Recent recent_ts = _Recent(NULL, -1)
    for event in events:
        updates = <tuple>plan[type(event)]
        for update in updates:
            if update.kind == PYTHON:
                update.python_update(event, now)
                continue
            if update.generation != generation:
                update.refresh(generation)
            if update.condition_offset >= 0:
                check = _field(event, update.condition_offset)
                if (check in update.allowed) == update.negate:
                    continue
            if update.value_offset == -1:
                sample = 1.0
            elif update.value_offset >= 0:
                sample = _field(event, update.value_offset)
            elif update.value_offset == -3:
                sample = _field(event, update.value_fields[0])
                other = _field(event, update.value_fields[1])
                sample = None if sample is None or other is None else sample * other
            elif update.value_offset == -4:
                sample = _field(event, update.value_fields[0])
                if sample is not None:
                    sample = abs(sample)
            else:
                sample = update.value_fn(event)
            if sample is None:
                continue
            key = _key(update, event)
            if update.kind == COUNTER:
                totals = update.totals
                hashed = hash_key(key)
                entry = totals.find(key, hashed)
                if entry < 0:
                    if totals.used >= update.family.max_series or not plain_key(key):
                        update.family.inc(key, sample)  # the cardinality guard (the overflow series), or a refusal
                        continue
                    key = _share_key(update.shared, <tuple>key, update.share_limit)
                    update.mark(key)
                    totals.insert(key, hashed, <double>sample)
                    continue
                # mark() may keep the committed row (a read): the entry stays where it is.
                update.mark(key)
                totals.entry_values[entry] += <double>sample
                continue
            current = PyDict_GetItem(update.series, key)
            if update.kind == HISTOGRAM:
                if current == NULL:
                    update.family.observe(key, sample)
                    continue
                value = <double>sample
                update.mark(key)
                counts = <array>current
                index = _bucket(update, value)
                counts.data.as_doubles[index] += 1.0
                counts.data.as_doubles[update.n_bounds + 1] += value
            else:  # GAUGE
                event_ts = <double>_named(event, &recent_ts, "ts")
                if current == NULL:
                    update.family.set(key, sample, event_ts, now)
                    continue
                current_obj = <object>current
                if event_ts < <double>(<tuple>current_obj)[1]:
                    continue
                update.mark(key)
                PyDict_SetItem(update.series, key, (sample, event_ts))
                PyDict_SetItem(update.updated, key, now)


def compiled_kind(Update update):
    """How `update` runs: "counter", "gauge" or "histogram" in C, or "python" (its update function)."""
    return ("counter", "gauge", "histogram", "python")[update.kind]



def untrack(object container):
    """Leave `container` out of the cyclic collector's walks (only for containers that can never be in a cycle)."""
    if PyObject_IS_GC(container):  # an object of a type the collector never tracks has no header to clear
        PyObject_GC_UnTrack(<void*>container)


def share_key(list tables, tuple key, Py_ssize_t limit):
    """Family.shared_key in C: each label value replaced by the family's one copy of it, tables grown to `limit`."""
    return _share_key(tables, key, limit)


cdef tuple _share_key(list tables, tuple key, Py_ssize_t limit):
    cdef Py_ssize_t n = len(key)
    cdef Py_ssize_t n_tables = len(tables)
    cdef tuple shared = PyTuple_New(n)
    cdef Py_ssize_t index
    cdef PyObject* found
    cdef object value, kept, table
    cdef bint only_text = True
    for index in range(n):
        value = key[index]
        kept = value
        only_text = only_text and PyUnicode_CheckExact(value)
        table = tables[index] if index < n_tables else None
        if table is not None:
            found = PyDict_GetItem(<dict>table, value)
            if found != NULL:
                kept = <object>found
            elif len(<dict>table) >= limit:
                tables[index] = None
            else:
                PyDict_SetItem(<dict>table, value, value)
        Py_INCREF(kept)
        PyTuple_SET_ITEM(shared, index, kept)
    if only_text:
        # A tuple of strings can never be part of a reference cycle (the collector untracks it at its first
        # pass anyway). Untracked from the start, the store's keys never fill the young generation the
        # collector walks: at a million series that walk stalled the event loop for tens of milliseconds.
        PyObject_GC_UnTrack(<void*>shared)
    return shared


def check_values(set valid, tuple seen, tuple matchers, tuple values, Py_ssize_t capacity):
    """LabelCheck's test of one combination of label values in C: the position of a bad value, or -1.

    `matchers`: per value, its charset table or regular expression (see _matches).
    """
    return _check_values(valid, seen, matchers, values, capacity)


cdef class _Slots:
    """Where an event type keeps its label-like fields (n = -1: not all of them in plain slots)."""

    cdef Py_ssize_t n
    cdef Py_ssize_t offsets[MAX_LABELS]


cdef dict _slots_by_type = {}


cdef _Slots _slots_of(object event_type, tuple names):
    cdef _Slots slots = _slots_by_type.get(event_type)
    if slots is not None:
        return slots
    slots = _Slots()
    offsets = [_offset(event_type, name) for name in names]
    if -1 in offsets or len(offsets) > MAX_LABELS:
        slots.n = -1
    else:
        slots.n = len(offsets)
        for index, offset in enumerate(offsets):
            slots.offsets[index] = offset
    _slots_by_type[event_type] = slots
    return slots


cdef inline bint _same_text(object text, object other):
    """Whether two exact strings hold the same text, compared without hashing either."""
    cdef Py_ssize_t length = PyUnicode_GET_LENGTH(text)
    cdef int kind = PyUnicode_KIND(text)
    if length != PyUnicode_GET_LENGTH(other) or kind != PyUnicode_KIND(other):
        return False
    return memcmp(PyUnicode_DATA(text), PyUnicode_DATA(other), length * kind) == 0


def first_bad_event(list events, dict fields_by_type, Py_ssize_t capacity, object metric_type, object metric_problem):
    """LabelCheck over a message's events in C: the index of the first with a bad label-like value, or -1.

    `fields_by_type`: event type -> (values_of, valid, seen, matchers, names); events of `metric_type` also
    have their labels checked by `metric_problem` (None when they are fine). Each value found in `seen` is
    replaced in its event by the copy `seen` keeps (equal text, so the event is unchanged in meaning): every
    later lookup of a key made of such values compares them by identity. A value equal to the one before it
    in the same field (a message's events repeat their source, and often more) is matched by its text alone.
    """
    cdef Py_ssize_t index, position
    cdef tuple fields, seen, matchers
    cdef object event, event_type, value
    cdef PyObject** slot
    cdef PyObject* found
    cdef PyObject* old
    cdef PyObject* last_type = NULL
    # Per field, the kept copy of the previous event's value (borrowed: `seen` holds it).
    cdef PyObject* previous[MAX_LABELS]
    cdef dict known
    cdef _Slots slots
    for index in range(len(events)):
        event = events[index]
        event_type = type(event)
        fields = <tuple>fields_by_type[event_type]
        slots = _slots_of(event_type, <tuple>fields[4])
        if slots.n < 0:
            if _check_values(<set>fields[1], <tuple>fields[2], <tuple>fields[3], <tuple>fields[0](event),
                             capacity) >= 0:
                return index
        else:
            if <PyObject*>event_type != last_type:
                last_type = <PyObject*>event_type
                for position in range(slots.n):
                    previous[position] = NULL
            seen = <tuple>fields[2]
            matchers = <tuple>fields[3]
            for position in range(slots.n):
                slot = <PyObject**>((<char*><PyObject*>event) + slots.offsets[position])
                value = _field(event, slots.offsets[position])
                found = previous[position]
                if found == NULL or (found != slot[0] and not (
                    PyUnicode_CheckExact(value) and _same_text(value, <object>found)
                )):
                    known = <dict>seen[position]
                    found = PyDict_GetItem(known, value)
                    if found == NULL:
                        if not _matches(matchers[position], value):
                            return index
                        if len(known) < capacity:
                            PyDict_SetItem(known, value, value)
                            previous[position] = slot[0]
                        else:
                            previous[position] = NULL
                        continue
                    previous[position] = found
                if found != slot[0]:
                    old = slot[0]
                    Py_INCREF(<object>found)
                    slot[0] = found
                    Py_DECREF(<object>old)
        if event_type is metric_type and metric_problem(event) is not None:
            return index
    return -1


cdef bint _matches(object matcher, object value) except -1:
    """Whether `value` is in the charset `matcher` describes: a table of 128 ASCII flags and one for the empty
    string (schemas.labels.charset_table), or a regular expression where there is no such table."""
    cdef Py_ssize_t length, index
    cdef const unsigned char* table
    cdef const Py_UCS1* text
    if type(matcher) is not bytes or not PyUnicode_CheckExact(value):
        return matcher.fullmatch(value) is not None
    if not PyUnicode_IS_ASCII(value):
        return False
    table = <const unsigned char*>PyBytes_AS_STRING(matcher)
    length = PyUnicode_GET_LENGTH(value)
    if length == 0:
        return table[128] != 0
    text = PyUnicode_1BYTE_DATA(value)
    for index in range(length):
        if not table[text[index]]:
            return False
    return True


cdef Py_ssize_t _check_values(set valid, tuple seen, tuple matchers, tuple values, Py_ssize_t capacity) except -2:
    if values in valid:
        return -1
    cdef Py_ssize_t index
    cdef dict known
    cdef object value
    for index in range(len(values)):
        value = values[index]
        known = <dict>seen[index]
        if value in known:
            continue
        if not _matches(matchers[index], value):
            return index
        if len(known) < capacity:
            known[value] = value
    if len(valid) < capacity:
        valid.add(values)
    return -1


DEF RECENT_PAIRS = 8


def count_by_type_and_source(list events):
    """{(event type, source): events} of a message in C.

    A batch holds a few (kind, source) pairs: the first RECENT_PAIRS are counted in C arrays, compared by type
    and source text; any further pair goes to a dict.
    """
    cdef PyObject* types[RECENT_PAIRS]
    cdef PyObject* sources[RECENT_PAIRS]
    cdef Py_ssize_t counts[RECENT_PAIRS]
    cdef Py_ssize_t n_pairs = 0, index
    cdef dict more = {}
    cdef object event, event_type, source, key
    cdef _Recent recent = _Recent(NULL, -1)
    for event in events:
        event_type = type(event)
        source = _named(event, &recent, "source")
        for index in range(n_pairs):
            if types[index] == <PyObject*>event_type and (
                sources[index] == <PyObject*>source or <object>sources[index] == source
            ):
                counts[index] += 1
                break
        else:
            if n_pairs < RECENT_PAIRS:
                # Borrowed: the events (and so their sources) outlive this call.
                types[n_pairs] = <PyObject*>event_type
                sources[n_pairs] = <PyObject*>source
                counts[n_pairs] = 1
                n_pairs += 1
            else:
                key = (event_type, source)
                more[key] = more.get(key, 0) + 1
    # In order of first appearance, as Counter gives them: the first pairs, then the others.
    cdef dict tally = {(<object>types[index], <object>sources[index]): counts[index] for index in range(n_pairs)}
    tally.update(more)
    return tally


def latest_ts(list events):
    """The largest `ts` of a message's events in C (-inf for none)."""
    cdef double latest = float("-inf")
    cdef double ts
    cdef _Recent recent = _Recent(NULL, -1)
    for event in events:
        ts = _named(event, &recent, "ts")
        if ts > latest:
            latest = ts
    return latest


def carries_ids(list events, object order_type):
    """Whether any event has a trace id, or is an order with an order id (exemplars.carries_ids, in C)."""
    cdef _Recent recent_trace_id = _Recent(NULL, -1)
    cdef _Recent recent_order_id = _Recent(NULL, -1)
    for event in events:
        if _named(event, &recent_trace_id, "trace_id"):
            return True
        if type(event) is order_type and _named(event, &recent_order_id, "order_id"):
            return True
    return False


def unpack_keys(list strings, Py_ssize_t width, Py_ssize_t size, bytes packed, Py_ssize_t count):
    """A checkpoint chunk's keys from its strings and packed little-endian indexes (stateformat, in C).

    The caller has checked that `packed` holds `width * count` indexes of `size` bytes; an index past the
    strings raises IndexError.
    """
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(packed)
    cdef Py_ssize_t n_strings = len(strings)
    cdef list keys = PyList_New(count)
    cdef tuple key
    cdef Py_ssize_t series, label, at = 0, shift
    cdef size_t index
    cdef object value
    for series in range(count):
        key = PyTuple_New(width)
        for label in range(width):
            index = 0
            for shift in range(size):
                index |= (<size_t>data[at + shift]) << (8 * shift)
            at += size
            if index >= <size_t>n_strings:
                raise IndexError(f"key index {index} past the {n_strings} strings of its chunk")
            value = strings[index]
            Py_INCREF(value)
            PyTuple_SET_ITEM(key, label, value)
        Py_INCREF(key)
        PyList_SET_ITEM(keys, series, key)
    return keys
