/* qtools.numerics._native: the converter's per-value loops for BF16 weights in compiled code.
 *
 * Each function is one pass over a slab of rows, bit for bit the torch reference in qtools.numerics (the tests
 * compare them on edge cases, and the float32 -> e4m3 rounding on every non-negative float32):
 *   abs_max_bf16   amax(|x|) per group as sign-cleared BF16 bits (the integer order of those bits is the order
 *                  of the magnitudes, NaN above Inf above every finite value, as in qtools.numerics.finite);
 *   fp8_codes_bf16 float32(x) / divisor of its 128-column block, clamped to +-448, rounded to e4m3 (nearest,
 *                  ties to even): `fp8_e4m3_codes`;
 *   int4_pack_bf16 float32(x) / divisor of its group, clamped to [-8, 7], rounded half to even, offset by 8, two
 *                  nibbles a byte (low nibble first): `int4_codes` + `pack_int4`;
 *   e4m3_from_f32  the e4m3 rounding alone, for the exhaustive test.
 * The scale rules themselves stay in torch (qtools_kernels.reference): only the per-value work is here.
 *
 * Pointers come from tensors' data_ptr(); the caller (qtools.numerics.native) checks shapes, strides and dtypes.
 * Every loop releases the GIL. Each has a portable scalar form and, on x86-64 CPUs that have it (checked at
 * run time), an AVX2 form doing the same operations 8 values at a time: IEEE division (vdivps), comparisons and
 * integer arithmetic on the float bits, so both give the same bytes (the tests run whichever this CPU takes, and
 * the scalar form after set_simd("scalar")). Built with -ffp-contract=off and without -ffast-math. The INT4
 * packing assumes a little-endian machine (the caller checks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QT_AVX2 1
#include <immintrin.h>
#endif

static inline float bf16_to_f32(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline uint32_t f32_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* float32 -> float8_e4m3fn code after a clamp to +-448: nearest, ties to even; NaN gives 0x7F (with its sign).
 * Normal range (|x| >= 2^-6): drop 20 mantissa bits with round-half-even, then rebias the exponent (127 -> 7); a
 * carry out of the mantissa moves to the next binade, as it should. Below 2^-6 the codes are m * 2^-9, m = 0..8
 * (8 is the smallest normal, 0x08), so the code is x * 512 rounded to an integer: adding 2^23 rounds it (the
 * spacing of floats there is 1) and the low bits of the sum are the integer. */
static inline uint8_t e4m3_code(float x) {
    uint32_t bits = f32_bits(x);
    uint32_t sign = (bits >> 24) & 0x80u;
    uint32_t magnitude = bits & 0x7FFFFFFFu;
    float absolute;
    memcpy(&absolute, &magnitude, sizeof absolute);
    uint32_t normal = (magnitude + 0x7FFFFu + ((magnitude >> 20) & 1u)) >> 20;
    normal -= 120u << 3;
    uint32_t subnormal = f32_bits(absolute * 512.0f + 8388608.0f) - 0x4B000000u;
    uint32_t code = magnitude < 0x3C800000u ? subnormal : normal; /* 0x3C800000 = 2^-6 */
    code = magnitude > 0x43E00000u ? 0x7Eu : code;                /* 0x43E00000 = 448: the clamp */
    code = magnitude > 0x7F800000u ? 0x7Fu : code;                /* NaN */
    return (uint8_t)(code | sign);
}

static int use_avx2 = 0;

/* ---- amax ------------------------------------------------------------------------------------------------- */

static void abs_max_loop(const uint16_t *src, Py_ssize_t rows, Py_ssize_t groups, Py_ssize_t group,
                         Py_ssize_t row_stride, int over_rows, uint16_t *out) {
    /* over_rows: one amax per group over every row (FP8 block rows), else one per row and group (INT4). Cleared
     * of their sign, the bits are non-negative int16s, so a signed max (one SSE2 instruction) orders them. */
    if (over_rows) {
        for (Py_ssize_t g = 0; g < groups; g++) out[g] = 0;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint16_t *row = src + r * row_stride;
        uint16_t *dst = over_rows ? out : out + r * groups;
        for (Py_ssize_t g = 0; g < groups; g++) {
            const uint16_t *values = row + g * group;
            int16_t best = over_rows ? (int16_t)dst[g] : 0;
            for (Py_ssize_t c = 0; c < group; c++) {
                int16_t magnitude = (int16_t)(values[c] & 0x7FFFu);
                best = magnitude > best ? magnitude : best;
            }
            dst[g] = (uint16_t)best;
        }
    }
}

/* ---- scalar forms ----------------------------------------------------------------------------------------- */

static void fp8_codes_span(const uint16_t *src, Py_ssize_t count, float divisor, uint8_t *dst) {
    for (Py_ssize_t c = 0; c < count; c++) dst[c] = e4m3_code(bf16_to_f32(src[c]) / divisor);
}

static inline uint8_t int4_nibble(uint16_t value, float divisor) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds |x| < 2^22 to an integer, ties to even */
    float q = bf16_to_f32(value) / divisor;
    q = q < -8.0f ? -8.0f : q;
    q = q > 7.0f ? 7.0f : q;
    return (uint8_t)(f32_bits(q + magic) - 0x4B400000u + 8u);
}

static void int4_pack_span(const uint16_t *src, Py_ssize_t count, float divisor, uint8_t *dst) {
    /* count even; byte c holds value 2c in its low nibble and value 2c + 1 in its high one */
    for (Py_ssize_t c = 0; c < count / 2; c++)
        dst[c] = (uint8_t)(int4_nibble(src[2 * c], divisor) | (int4_nibble(src[2 * c + 1], divisor) << 4));
}

/* ---- AVX2 forms ------------------------------------------------------------------------------------------- */

#ifdef QT_AVX2
#define QT_TARGET __attribute__((target("avx2")))

QT_TARGET static inline __m256 bf16x8_to_f32(const uint16_t *src) {
    __m128i half = _mm_loadu_si128((const __m128i *)src);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

/* e4m3_code, 8 lanes. Magnitudes are compared as signed int32s (they are < 2^31). */
QT_TARGET static inline __m256i e4m3x8(__m256 x) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i bits = _mm256_castps_si256(x);
    __m256i magnitude = _mm256_and_si256(bits, abs_mask);
    __m256i sign = _mm256_srli_epi32(_mm256_andnot_si256(abs_mask, bits), 24);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(magnitude, 20), _mm256_set1_epi32(1));
    __m256i normal = _mm256_add_epi32(magnitude, _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), odd));
    normal = _mm256_sub_epi32(_mm256_srli_epi32(normal, 20), _mm256_set1_epi32(120 << 3));
    __m256 scaled = _mm256_add_ps(_mm256_mul_ps(_mm256_castsi256_ps(magnitude), _mm256_set1_ps(512.0f)),
                                  _mm256_set1_ps(8388608.0f));
    __m256i subnormal = _mm256_sub_epi32(_mm256_castps_si256(scaled), _mm256_set1_epi32(0x4B000000));
    __m256i tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), magnitude);
    __m256i code = _mm256_blendv_epi8(normal, subnormal, tiny);
    code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7E), _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x43E00000)));
    code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7F), _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7F800000)));
    return _mm256_or_si256(code, sign);
}

/* Four vectors of 8 int32 lanes, each 0..255 -> 32 bytes in order. */
QT_TARGET static inline void store_bytes32(uint8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i words = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
    words = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, words);
}

QT_TARGET static void fp8_codes_span_avx2(const uint16_t *src, Py_ssize_t count, float divisor, uint8_t *dst) {
    __m256 d = _mm256_set1_ps(divisor);
    Py_ssize_t c = 0;
    for (; c + 32 <= count; c += 32) {
        __m256i a = e4m3x8(_mm256_div_ps(bf16x8_to_f32(src + c), d));
        __m256i b = e4m3x8(_mm256_div_ps(bf16x8_to_f32(src + c + 8), d));
        __m256i e = e4m3x8(_mm256_div_ps(bf16x8_to_f32(src + c + 16), d));
        __m256i f = e4m3x8(_mm256_div_ps(bf16x8_to_f32(src + c + 24), d));
        store_bytes32(dst + c, a, b, e, f);
    }
    fp8_codes_span(src + c, count - c, divisor, dst + c);
}

QT_TARGET static inline __m256i int4x8(const uint16_t *src, __m256 divisor) {
    __m256 q = _mm256_div_ps(bf16x8_to_f32(src), divisor);
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
    q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_add_epi32(_mm256_cvtps_epi32(q), _mm256_set1_epi32(8));
}

QT_TARGET static void int4_pack_span_avx2(const uint16_t *src, Py_ssize_t count, float divisor, uint8_t *dst) {
    /* 32 codes as 32 bytes in order, read as 16 little-endian words even + 256 * odd: (w | w >> 4) & 0xFF is
     * even + 16 * odd; narrowing the words keeps the order once the 64-bit quarters are put back in place. */
    __m256 d = _mm256_set1_ps(divisor);
    Py_ssize_t c = 0;
    for (; c + 32 <= count; c += 32) {
        __m256i words = _mm256_packus_epi16(_mm256_packus_epi32(int4x8(src + c, d), int4x8(src + c + 8, d)),
                                            _mm256_packus_epi32(int4x8(src + c + 16, d), int4x8(src + c + 24, d)));
        words = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        words = _mm256_and_si256(_mm256_or_si256(words, _mm256_srli_epi16(words, 4)), _mm256_set1_epi16(0xFF));
        __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(words, words), 0x08);
        _mm_storeu_si128((__m128i *)(dst + c / 2), _mm256_castsi256_si128(bytes));
    }
    int4_pack_span(src + c, count - c, divisor, dst + c / 2);
}

QT_TARGET static void e4m3_span_avx2(const float *src, Py_ssize_t count, uint8_t *dst) {
    Py_ssize_t i = 0;
    for (; i + 32 <= count; i += 32)
        store_bytes32(dst + i, e4m3x8(_mm256_loadu_ps(src + i)), e4m3x8(_mm256_loadu_ps(src + i + 8)),
                      e4m3x8(_mm256_loadu_ps(src + i + 16)), e4m3x8(_mm256_loadu_ps(src + i + 24)));
    for (; i < count; i++) dst[i] = e4m3_code(src[i]);
}
#endif

/* ---- loops over rows -------------------------------------------------------------------------------------- */

typedef void (*span_fn)(const uint16_t *, Py_ssize_t, float, uint8_t *);

static span_fn fp8_span(void) {
#ifdef QT_AVX2
    if (use_avx2) return fp8_codes_span_avx2;
#endif
    return fp8_codes_span;
}

static span_fn int4_span(void) {
#ifdef QT_AVX2
    if (use_avx2) return int4_pack_span_avx2;
#endif
    return int4_pack_span;
}

static void fp8_codes_loop(const uint16_t *src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t row_stride,
                           Py_ssize_t block, const float *divisors, uint8_t *out) {
    span_fn span = fp8_span();
    for (Py_ssize_t r = 0; r < rows; r++)
        for (Py_ssize_t first = 0; first < cols; first += block) {
            Py_ssize_t count = first + block < cols ? block : cols - first;
            span(src + r * row_stride + first, count, divisors[first / block], out + r * cols + first);
        }
}

static void int4_pack_loop(const uint16_t *src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t row_stride,
                           Py_ssize_t group, const float *divisors, uint8_t *out) {
    span_fn span = int4_span();
    Py_ssize_t groups = cols / group;
    for (Py_ssize_t r = 0; r < rows; r++)
        for (Py_ssize_t g = 0; g < groups; g++)
            span(src + r * row_stride + g * group, group, divisors[r * groups + g], out + (r * cols + g * group) / 2);
}

static void e4m3_loop(const float *src, Py_ssize_t count, uint8_t *out) {
#ifdef QT_AVX2
    if (use_avx2) {
        e4m3_span_avx2(src, count, out);
        return;
    }
#endif
    for (Py_ssize_t i = 0; i < count; i++) out[i] = e4m3_code(src[i]);
}

static void *as_pointer(unsigned long long address) { return (void *)(uintptr_t)address; }

static PyObject *abs_max_bf16(PyObject *self, PyObject *args) {
    unsigned long long src, out;
    Py_ssize_t rows, groups, group, row_stride;
    int over_rows;
    if (!PyArg_ParseTuple(args, "KnnnnpK", &src, &rows, &groups, &group, &row_stride, &over_rows, &out))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    abs_max_loop(as_pointer(src), rows, groups, group, row_stride, over_rows, as_pointer(out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *fp8_codes_bf16(PyObject *self, PyObject *args) {
    unsigned long long src, divisors, out;
    Py_ssize_t rows, cols, row_stride, block;
    if (!PyArg_ParseTuple(args, "KnnnnKK", &src, &rows, &cols, &row_stride, &block, &divisors, &out)) return NULL;
    if (block <= 0) return PyErr_Format(PyExc_ValueError, "block must be positive, got %zd", block);
    Py_BEGIN_ALLOW_THREADS
    fp8_codes_loop(as_pointer(src), rows, cols, row_stride, block, as_pointer(divisors), as_pointer(out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *int4_pack_bf16(PyObject *self, PyObject *args) {
    unsigned long long src, divisors, out;
    Py_ssize_t rows, cols, row_stride, group;
    if (!PyArg_ParseTuple(args, "KnnnnKK", &src, &rows, &cols, &row_stride, &group, &divisors, &out)) return NULL;
    if (group <= 0 || group % 2 || cols % group)
        return PyErr_Format(PyExc_ValueError, "width %zd is not a multiple of an even group %zd", cols, group);
    Py_BEGIN_ALLOW_THREADS
    int4_pack_loop(as_pointer(src), rows, cols, row_stride, group, as_pointer(divisors), as_pointer(out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *e4m3_from_f32(PyObject *self, PyObject *args) {
    unsigned long long src, out;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "KnK", &src, &count, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    e4m3_loop(as_pointer(src), count, as_pointer(out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static int has_avx2(void) {
#ifdef QT_AVX2
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static PyObject *simd(PyObject *self, PyObject *args) { return PyUnicode_FromString(use_avx2 ? "avx2" : "scalar"); }

static PyObject *set_simd(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (strcmp(name, "scalar") == 0) {
        use_avx2 = 0;
    } else if (strcmp(name, "avx2") == 0 && has_avx2()) {
        use_avx2 = 1;
    } else {
        return PyErr_Format(PyExc_ValueError, "no SIMD form %s on this CPU (have: scalar%s)", name,
                            has_avx2() ? ", avx2" : "");
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"simd", simd, METH_NOARGS, "simd(): the form the loops take now, 'avx2' or 'scalar'."},
    {"set_simd", set_simd, METH_VARARGS, "set_simd(name): take the 'avx2' (where the CPU has it) or 'scalar' form."},
    {"abs_max_bf16", abs_max_bf16, METH_VARARGS,
     "abs_max_bf16(src, rows, groups, group, row_stride, over_rows, out): sign-cleared BF16 amax bits per group."},
    {"fp8_codes_bf16", fp8_codes_bf16, METH_VARARGS,
     "fp8_codes_bf16(src, rows, cols, row_stride, block, divisors, out): e4m3 codes of x / divisor[block]."},
    {"int4_pack_bf16", int4_pack_bf16, METH_VARARGS,
     "int4_pack_bf16(src, rows, cols, row_stride, group, divisors, out): packed INT4 nibbles of x / divisor."},
    {"e4m3_from_f32", e4m3_from_f32, METH_VARARGS, "e4m3_from_f32(src, count, out): e4m3 codes of float32 values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    use_avx2 = has_avx2();
    return PyModule_Create(&module);
}
