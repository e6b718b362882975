/*
 * The SFU's per-copy loop in C: one call per incoming RTP packet sends it to
 * every steady consumer of its producer.
 *
 * For each target (one subscriber's copy) it writes the RTP header the
 * subscriber expects (its SSRC, payload type, sequence numbers shifted by its
 * offset, the timestamp shifted by its offset, the negotiated mid,
 * abs-send-time and audio-level extensions), keeps the clear packet for
 * retransmission, protects it with the subscriber's own libsrtp session
 * (through the srtp_protect that pylibsrtp's library exports) and sends it on
 * the subscriber's ICE socket. The Python side (server/sfu/fastpath.py)
 * decides which consumers are steady, and keeps everything else: keyframe
 * waits, renegotiation, NACK handling, RTCP.
 *
 * Why C: in Python this loop cost 65-72 us of CPU per copy on the 2-core
 * machine (docs/sfu.md), three times its floor (SRTP plus sendto).
 *
 * A call may carry several packets (the ones that arrived together: a video
 * frame's burst). Each subscriber then gets all of them, in one sendmmsg,
 * before the next subscriber gets any: the first subscribers have the whole
 * frame sooner, the last no later, and one system call carries the burst.
 *
 * The GIL is released while sending: the table and the packet are touched
 * only by the event loop's thread, which is the one waiting here.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* libsrtp 2's srtp_protect(srtp_t, void *rtp, int *len). */
typedef int (*protect_fn)(void *session, void *packet, int *length);

#define HISTORY 128          /* as aiortc's RTP_HISTORY_SIZE */
#define MAX_PACKET 1600      /* clear RTP packet, header included */
#define TRAILER 144          /* pylibsrtp's SRTP_MAX_TRAILER_LEN */
#define MAX_EXT 40
/* The largest payload whose packet fits MAX_PACKET with the longest header a
   target can have: 12 bytes, the extension block's 4, MAX_EXT of elements. */
#define MAX_PAYLOAD (MAX_PACKET - 16 - MAX_EXT)
/* Packets per call (more are sent in turns of this many). */
#define BATCH 32
/* One protected packet, 32-bit aligned as libsrtp wants it. */
#define SLOT (((MAX_PACKET + TRAILER) + 3) & ~3)

typedef struct {
    uint16_t seq;
    uint16_t length;         /* 0: empty */
    uint8_t data[MAX_PACKET];
} Stored;

typedef struct {
    long long key;
    void *session;
    int fd;                  /* our own dup() of the ICE socket */
    struct sockaddr_storage address;
    socklen_t address_length;
    uint32_t ssrc;
    uint8_t payload_type;
    uint16_t seq_offset;
    uint32_t timestamp_offset;
    long long start_ext;     /* packets older than this one are not this consumer's */
    uint8_t ext_prefix[MAX_EXT];
    int ext_prefix_length;
    int with_abs_send_time;
    int level_id;
    /* What was sent, for sender reports and the hand-back to Python. */
    unsigned long long packets, octets;
    uint16_t last_seq;
    uint32_t last_timestamp;
    int sent_any;
    unsigned long long send_errors, protect_errors;
    int last_errno;
    Stored *history;
} Target;

typedef struct {
    PyObject_HEAD
    protect_fn protect;
    Target *targets;
    Py_ssize_t count, capacity;
    uint8_t *scratch;        /* BATCH slots: one target's protected copies */
} Fanout;

/* One incoming packet, as a call hands it over. */
typedef struct {
    Py_buffer payload;
    int marker;
    long long ext_seq;
    uint32_t timestamp;
    long level;              /* -1: none; else (voice activity << 7) | level */
} Incoming;

static void target_free(Target *t) {
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
    PyMem_RawFree(t->history);
    t->history = NULL;
}

static Py_ssize_t find(Fanout *self, long long key) {
    for (Py_ssize_t i = 0; i < self->count; i++)
        if (self->targets[i].key == key) return i;
    return -1;
}

static int Fanout_init(Fanout *self, PyObject *args, PyObject *kwds) {
    unsigned long long protect;
    static char *names[] = {"protect_address", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K", names, &protect)) return -1;
    if (!protect) {
        PyErr_SetString(PyExc_ValueError, "protect_address is NULL");
        return -1;
    }
    self->protect = (protect_fn)(uintptr_t)protect;
    if (!self->scratch) {
        self->scratch = PyMem_RawMalloc((size_t)BATCH * SLOT);
        if (!self->scratch) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void Fanout_dealloc(Fanout *self) {
    for (Py_ssize_t i = 0; i < self->count; i++) target_free(&self->targets[i]);
    PyMem_Free(self->targets);
    PyMem_RawFree(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Fanout_add(Fanout *self, PyObject *args, PyObject *kwds) {
    long long key, start_ext;
    unsigned long long session;
    int fd, port, payload_type, with_ast, level_id;
    const char *host;
    unsigned long ssrc, timestamp_offset;
    unsigned int seq_offset;
    Py_buffer prefix;
    static char *names[] = {"key", "session", "fd", "host", "port", "ssrc", "payload_type",
                            "seq_offset", "timestamp_offset", "start_ext", "ext_prefix",
                            "abs_send_time", "level_id", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LKisikiIkLy*pi", names, &key, &session, &fd,
                                     &host, &port, &ssrc, &payload_type, &seq_offset,
                                     &timestamp_offset, &start_ext, &prefix, &with_ast, &level_id))
        return NULL;
    Target t;
    memset(&t, 0, sizeof t);
    t.fd = -1;
    if (prefix.len > MAX_EXT - 8) {
        PyBuffer_Release(&prefix);
        return PyErr_Format(PyExc_ValueError, "extension prefix of %zd bytes is too long", prefix.len);
    }
    memcpy(t.ext_prefix, prefix.buf, prefix.len);
    t.ext_prefix_length = (int)prefix.len;
    PyBuffer_Release(&prefix);
    if (!session) return PyErr_Format(PyExc_ValueError, "SRTP session is NULL");
    if (payload_type < 0 || payload_type > 127 || level_id < 0 || level_id > 14 || port <= 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "payload type, level id or port out of range");
    struct sockaddr_in *v4 = (struct sockaddr_in *)&t.address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&t.address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        t.address_length = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        t.address_length = sizeof *v6;
    } else {
        return PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    }
    t.history = PyMem_RawCalloc(HISTORY, sizeof(Stored));
    if (!t.history) return PyErr_NoMemory();
    t.fd = dup(fd);
    if (t.fd < 0) {
        PyMem_RawFree(t.history);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    t.key = key;
    t.session = (void *)(uintptr_t)session;
    t.ssrc = (uint32_t)ssrc;
    t.payload_type = (uint8_t)payload_type;
    t.seq_offset = (uint16_t)seq_offset;
    t.timestamp_offset = (uint32_t)timestamp_offset;
    t.start_ext = start_ext;
    t.with_abs_send_time = with_ast;
    t.level_id = level_id;

    Py_ssize_t at = find(self, key);
    if (at >= 0) {
        target_free(&self->targets[at]);
        self->targets[at] = t;
        Py_RETURN_NONE;
    }
    if (self->count == self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 8;
        Target *grown = PyMem_Realloc(self->targets, capacity * sizeof(Target));
        if (!grown) {
            target_free(&t);
            return PyErr_NoMemory();
        }
        self->targets = grown;
        self->capacity = capacity;
    }
    self->targets[self->count++] = t;
    Py_RETURN_NONE;
}

static PyObject *counters_of(Target *t) {
    return Py_BuildValue("{s:K,s:K,s:i,s:k,s:O,s:K,s:K,s:i}",
                         "packets", t->packets, "octets", t->octets, "last_seq", (int)t->last_seq,
                         "last_timestamp", (unsigned long)t->last_timestamp,
                         "sent_any", t->sent_any ? Py_True : Py_False,
                         "send_errors", t->send_errors, "protect_errors", t->protect_errors,
                         "last_errno", t->last_errno);
}

static PyObject *Fanout_counters(Fanout *self, PyObject *arg) {
    long long key = PyLong_AsLongLong(arg);
    if (key == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t at = find(self, key);
    if (at < 0) Py_RETURN_NONE;
    return counters_of(&self->targets[at]);
}

static PyObject *Fanout_remove(Fanout *self, PyObject *arg) {
    long long key = PyLong_AsLongLong(arg);
    if (key == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t at = find(self, key);
    if (at < 0) Py_RETURN_NONE;
    PyObject *out = counters_of(&self->targets[at]);
    target_free(&self->targets[at]);
    self->targets[at] = self->targets[--self->count];
    return out;
}

static PyObject *Fanout_history(Fanout *self, PyObject *args) {
    long long key;
    int seq;
    if (!PyArg_ParseTuple(args, "Li", &key, &seq)) return NULL;
    Py_ssize_t at = find(self, key);
    if (at < 0) Py_RETURN_NONE;
    Stored *s = &self->targets[at].history[(seq & 0xFFFF) % HISTORY];
    if (!s->length || s->seq != (uint16_t)seq) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)s->data, s->length);
}

static inline void put16(uint8_t *p, uint32_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

/* Writes one target's copy of `in` into `out`; returns its clear length. */
static int write_copy(const Target *t, const Incoming *in, const uint8_t *ast, uint8_t *out) {
    uint16_t seq = (uint16_t)((in->ext_seq + t->seq_offset) & 0xFFFF);
    uint8_t ext[MAX_EXT];
    int n = t->ext_prefix_length;
    memcpy(ext, t->ext_prefix, n);
    if (t->with_abs_send_time) {
        memcpy(ext + n, ast, 3);
        n += 3;
    }
    if (in->level >= 0 && t->level_id) {
        ext[n++] = (uint8_t)(t->level_id << 4);
        ext[n++] = (uint8_t)in->level;
    }
    while (n % 4) ext[n++] = 0;
    out[0] = n ? 0x90 : 0x80;
    out[1] = (uint8_t)((in->marker ? 0x80 : 0) | t->payload_type);
    put16(out + 2, seq);
    put32(out + 4, (uint32_t)(in->timestamp + t->timestamp_offset));
    put32(out + 8, t->ssrc);
    int length = 12;
    if (n) {
        out[12] = 0xBE;
        out[13] = 0xDE;
        put16(out + 14, n / 4);
        memcpy(out + 16, ext, n);
        length = 16 + n;
    }
    memcpy(out + length, in->payload.buf, in->payload.len);
    return length + (int)in->payload.len;
}

/* Every target's copies of in[0..n) (n <= BATCH); the GIL is released.
   done_times[i], where not NULL: when the kernel had target i's copies (CLOCK_REALTIME,
   as Python's time.time()), or 0 where it was sent none. */
static Py_ssize_t fan_out(Fanout *self, const Incoming *in, int n, const uint8_t *ast,
                          double *done_times) {
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    Py_ssize_t sent = 0;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Target *t = &self->targets[i];
        int m = 0;
        for (int k = 0; k < n; k++) {
            if (in[k].ext_seq < t->start_ext) continue;
            uint8_t *out = self->scratch + (size_t)m * SLOT;
            int length = write_copy(t, &in[k], ast, out);
            uint16_t seq = (uint16_t)((in[k].ext_seq + t->seq_offset) & 0xFFFF);
            Stored *s = &t->history[seq % HISTORY];
            s->seq = seq;
            s->length = (uint16_t)length;
            memcpy(s->data, out, length);
            if (self->protect(t->session, out, &length) != 0) {
                t->protect_errors++;
                continue;
            }
            vectors[m].iov_base = out;
            vectors[m].iov_len = (size_t)length;
            memset(&messages[m], 0, sizeof messages[m]);
            messages[m].msg_hdr.msg_name = &t->address;
            messages[m].msg_hdr.msg_namelen = t->address_length;
            messages[m].msg_hdr.msg_iov = &vectors[m];
            messages[m].msg_hdr.msg_iovlen = 1;
            m++;
            /* Counted as sent whether or not the kernel takes it, as aiortc
               counts what it hands to the socket. */
            t->packets++;
            t->octets += in[k].payload.len;
            /* The newest sent (a publisher's late retransmission is older):
               where Python goes on numbering if the consumer leaves the loop. */
            if (!t->sent_any || (uint16_t)(seq - t->last_seq) < 0x8000) {
                t->last_seq = seq;
                t->last_timestamp = (uint32_t)(in[k].timestamp + t->timestamp_offset);
            }
            t->sent_any = 1;
        }
        for (int done = 0; done < m;) {
            int r = sendmmsg(t->fd, messages + done, (unsigned)(m - done), MSG_DONTWAIT);
            if (r <= 0) {
                /* Full socket buffer or an ICMP error from a departed
                   subscriber: lost packets, as for any UDP send; NACK may
                   recover them. */
                t->send_errors += (unsigned long long)(m - done);
                t->last_errno = r < 0 ? errno : 0;
                break;
            }
            done += r;
        }
        sent += m;
        if (done_times) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            done_times[i] = m ? now.tv_sec + now.tv_nsec * 1e-9 : 0;
        }
    }
    return sent;
}

/* Reads one (payload, marker, ext_seq, timestamp, level) into `in`. */
static int read_incoming(PyObject *payload, PyObject *marker, PyObject *ext_seq,
                         PyObject *timestamp, PyObject *level, Incoming *in) {
    if (PyObject_GetBuffer(payload, &in->payload, PyBUF_SIMPLE) < 0) return -1;
    in->marker = PyObject_IsTrue(marker);
    in->ext_seq = PyLong_AsLongLong(ext_seq);
    in->timestamp = (uint32_t)PyLong_AsUnsignedLong(timestamp);
    in->level = PyLong_AsLong(level);
    if (PyErr_Occurred() || in->marker < 0 || in->payload.len > MAX_PAYLOAD) {
        PyBuffer_Release(&in->payload);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "payload of %zd bytes is over MAX_PAYLOAD (%d)",
                         in->payload.len, MAX_PAYLOAD);
        return -1;
    }
    return 0;
}

static int read_abs_send_time(PyObject *object, Py_buffer *ast) {
    if (PyObject_GetBuffer(object, ast, PyBUF_SIMPLE) < 0) return -1;
    if (ast->len != 3) {
        PyBuffer_Release(ast);
        PyErr_SetString(PyExc_ValueError, "abs_send_time must be 3 bytes");
        return -1;
    }
    return 0;
}

/* send(payload, marker, ext_seq, timestamp, abs_send_time, level) -> copies sent. */
static PyObject *Fanout_send(Fanout *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) return PyErr_Format(PyExc_TypeError, "send() takes 6 arguments");
    Py_buffer ast;
    Incoming in;
    if (read_abs_send_time(args[4], &ast) < 0) return NULL;
    if (read_incoming(args[0], args[1], args[2], args[3], args[5], &in) < 0) {
        PyBuffer_Release(&ast);
        return NULL;
    }
    Py_ssize_t sent;
    Py_BEGIN_ALLOW_THREADS
    sent = fan_out(self, &in, 1, ast.buf, NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in.payload);
    PyBuffer_Release(&ast);
    return PyLong_FromSsize_t(sent);
}

/* send_many(packets, abs_send_time) -> [when each target had its copies];
   packets: a list of (payload, marker, ext_seq, timestamp, level), in the
   order they arrived. A target sent nothing (it started after them) is left
   out of the list. */
static PyObject *Fanout_send_many(Fanout *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "send_many() takes a list of packets and abs_send_time");
    Py_buffer ast;
    if (read_abs_send_time(args[1], &ast) < 0) return NULL;
    PyObject *packets = args[0];
    Py_ssize_t total = PyList_GET_SIZE(packets), count = self->count;
    double *done_times = PyMem_Calloc(count ? count : 1, sizeof(double));
    if (!done_times) {
        PyBuffer_Release(&ast);
        return PyErr_NoMemory();
    }
    Incoming in[BATCH];
    for (Py_ssize_t start = 0; start < total; start += BATCH) {
        int n = 0;
        for (; n < BATCH && start + n < total; n++) {
            PyObject *item = PyList_GET_ITEM(packets, start + n);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 5) {
                PyErr_SetString(PyExc_TypeError,
                                "a packet is (payload, marker, ext_seq, timestamp, level)");
                break;
            }
            if (read_incoming(PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                              PyTuple_GET_ITEM(item, 2), PyTuple_GET_ITEM(item, 3),
                              PyTuple_GET_ITEM(item, 4), &in[n]) < 0)
                break;
        }
        if (PyErr_Occurred()) {
            for (int k = 0; k < n; k++) PyBuffer_Release(&in[k].payload);
            PyBuffer_Release(&ast);
            PyMem_Free(done_times);
            return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        fan_out(self, in, n, ast.buf, done_times);
        Py_END_ALLOW_THREADS
        for (int k = 0; k < n; k++) PyBuffer_Release(&in[k].payload);
    }
    PyBuffer_Release(&ast);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < count; i++) {
        if (done_times[i] == 0) continue;
        PyObject *when = PyFloat_FromDouble(done_times[i]);
        if (!when || PyList_Append(out, when) < 0) Py_CLEAR(out);
        Py_XDECREF(when);
    }
    PyMem_Free(done_times);
    return out;
}

static Py_ssize_t Fanout_len(Fanout *self) { return self->count; }

static PyMethodDef Fanout_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Fanout_add, METH_VARARGS | METH_KEYWORDS,
     "Add (or replace) a target; the socket fd is duplicated."},
    {"remove", (PyCFunction)Fanout_remove, METH_O, "Remove a target; returns its counters (or None)."},
    {"counters", (PyCFunction)Fanout_counters, METH_O, "A target's counters (or None)."},
    {"history", (PyCFunction)Fanout_history, METH_VARARGS,
     "history(key, seq): the clear packet a target was sent with that sequence number, or None."},
    {"send", (PyCFunction)(void (*)(void))Fanout_send, METH_FASTCALL,
     "send(payload, marker, ext_seq, timestamp, abs_send_time, level) -> copies sent."},
    {"send_many", (PyCFunction)(void (*)(void))Fanout_send_many, METH_FASTCALL,
     "send_many([(payload, marker, ext_seq, timestamp, level), ...], abs_send_time)\n"
     "-> [when each target had its copies (as time.time())]; each target gets all of them,\n"
     "in one sendmmsg, before the next."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Fanout_sequence = {.sq_length = (lenfunc)Fanout_len};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "server.sfu._fanout.Fanout",
    .tp_basicsize = sizeof(Fanout),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Every steady consumer of one producer: rewrite, protect, send.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Fanout_init,
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_methods = Fanout_methods,
    .tp_as_sequence = &Fanout_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_fanout", .m_doc = "The SFU's per-copy loop in C.", .m_size = -1,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&FanoutType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FanoutType);
    if (PyModule_AddObject(m, "Fanout", (PyObject *)&FanoutType) < 0) {
        Py_DECREF(&FanoutType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "HISTORY", HISTORY);
    PyModule_AddIntConstant(m, "MAX_PAYLOAD", MAX_PAYLOAD);
    PyModule_AddIntConstant(m, "BATCH", BATCH);
    return m;
}
