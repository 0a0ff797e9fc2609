/* Loops timed from C, for benchmarks/view_floor.py: each function runs one
 * call n times and returns the nanoseconds per call, so that no Python loop
 * is part of the figure. Built on the fly against Python's and NumPy's
 * headers; the DLPack exchange API is declared here, as far as it is read. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <time.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* f(x), through the vectorcall protocol, as Python calls a builtin. */
static PyObject* call(PyObject* self, PyObject* args) {
  PyObject *f, *x;
  long n;
  if (!PyArg_ParseTuple(args, "OOl", &f, &x, &n)) return NULL;
  const double start = now_ns();
  for (long i = 0; i < n; ++i) {
    PyObject* r = PyObject_Vectorcall(f, &x, 1, NULL);
    if (r == NULL) return NULL;
    Py_DECREF(r);
  }
  return PyFloat_FromDouble((now_ns() - start) / n);
}

/* x.name(), reaching the type's METH_NOARGS C function directly, as
 * tensorbridge's native core does. */
static PyObject* method(PyObject* self, PyObject* args) {
  PyObject* x;
  const char* name;
  long n;
  if (!PyArg_ParseTuple(args, "Osl", &x, &name, &n)) return NULL;
  PyObject* descriptor = PyObject_GetAttrString((PyObject*)Py_TYPE(x), name);
  if (descriptor == NULL) return NULL;
  if (!Py_IS_TYPE(descriptor, &PyMethodDescr_Type) ||
      (((PyMethodDescrObject*)descriptor)->d_method->ml_flags & METH_NOARGS) == 0) {
    Py_DECREF(descriptor);
    return PyErr_Format(PyExc_TypeError, "%s is not a no-argument C method", name);
  }
  PyCFunction function = ((PyMethodDescrObject*)descriptor)->d_method->ml_meth;
  const double start = now_ns();
  for (long i = 0; i < n; ++i) {
    PyObject* r = function(x, NULL);
    if (r == NULL) {
      Py_DECREF(descriptor);
      return NULL;
    }
    Py_DECREF(r);
  }
  const double elapsed = now_ns() - start;
  Py_DECREF(descriptor);
  return PyFloat_FromDouble(elapsed / n);
}

typedef struct {
  void* data;
  struct {
    int32_t type, id;
  } device;
  int32_t ndim;
  struct {
    uint8_t code, bits;
    uint16_t lanes;
  } dtype;
  int64_t *shape, *strides;
  uint64_t byte_offset;
} Tensor;

typedef struct {
  struct {
    uint32_t major, minor;
  } version;
  void* previous;
  void *allocator, *managed_from_object, *managed_to_object;
  int (*dltensor_from_object)(void* object, Tensor* out);
} ExchangeApi;

/* The exchange API's read of x into a DLTensor (no Python object made). */
static PyObject* exchange(PyObject* self, PyObject* args) {
  PyObject* x;
  long n;
  if (!PyArg_ParseTuple(args, "Ol", &x, &n)) return NULL;
  PyObject* capsule = PyObject_GetAttrString((PyObject*)Py_TYPE(x), "__dlpack_c_exchange_api__");
  if (capsule == NULL) return NULL;
  const ExchangeApi* api = PyCapsule_GetPointer(capsule, "dlpack_exchange_api");
  Py_DECREF(capsule); /* the type holds it */
  if (api == NULL) return NULL;
  if (api->version.major != 1)
    return PyErr_Format(PyExc_TypeError, "DLPack major version %u", api->version.major);
  Tensor tensor;
  const double start = now_ns();
  for (long i = 0; i < n; ++i) {
    if (api->dltensor_from_object(x, &tensor) != 0) return NULL;
  }
  return PyFloat_FromDouble((now_ns() - start) / n);
}

/* A NumPy array over like's memory, shape and strides, with base as its
 * base: what a zero-copy view costs NumPy to make and to free. */
static PyObject* view(PyObject* self, PyObject* args) {
  PyObject *like, *base;
  long n;
  if (!PyArg_ParseTuple(args, "O!Ol", &PyArray_Type, &like, &base, &n)) return NULL;
  PyArrayObject* a = (PyArrayObject*)like;
  const double start = now_ns();
  for (long i = 0; i < n; ++i) {
    PyArray_Descr* descr = PyArray_DESCR(a);
    Py_INCREF(descr);
    PyObject* made =
        PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(a), PyArray_DIMS(a),
                             PyArray_STRIDES(a), PyArray_DATA(a), NPY_ARRAY_WRITEABLE, NULL);
    if (made == NULL) return NULL;
    Py_INCREF(base);
    if (PyArray_SetBaseObject((PyArrayObject*)made, base) < 0) {
      Py_DECREF(made);
      return NULL;
    }
    Py_DECREF(made);
  }
  return PyFloat_FromDouble((now_ns() - start) / n);
}

static PyMethodDef methods[] = {
    {"call", call, METH_VARARGS, "ns per f(x)"},
    {"method", method, METH_VARARGS, "ns per x.name()"},
    {"exchange", exchange, METH_VARARGS, "ns per exchange-API read of x"},
    {"view", view, METH_VARARGS, "ns per NumPy view made and freed"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "view_floor_harness", NULL, -1, methods};

PyMODINIT_FUNC PyInit_view_floor_harness(void) {
  import_array();
  return PyModule_Create(&module);
}
