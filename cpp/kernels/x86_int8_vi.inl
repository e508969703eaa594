// What the x86 units' int8_kernels.inl interfaces (`VI`) share: the prefetch and the float steps on 256-bit
// registers (and, in units compiled for AVX-512, on 512-bit ones), for their VI to derive from. Included inside the
// anonymous namespace of those units.
struct ViPrefetch {
    static void prefetch(const int8_t* p, int64_t n, int64_t ahead) {
        if (ahead <= 0) return;
        for (int64_t o = 0; o < n; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + ahead + o), _MM_HINT_T0);
    }
};

struct ViFloat256 : ViPrefetch {
    using freg = __m256;
    static freg fzero() { return _mm256_setzero_ps(); }
    static freg fload(const float* p) { return _mm256_loadu_ps(p); }
    static void fstore(float* p, freg v) { _mm256_storeu_ps(p, v); }
    static freg fset1(float x) { return _mm256_set1_ps(x); }
    static freg fmul(freg a, freg b) { return _mm256_mul_ps(a, b); }
    static freg fadd(freg a, freg b) { return _mm256_add_ps(a, b); }
    static freg cvt(__m256i a) { return _mm256_cvtepi32_ps(a); }
    static freg fma(freg a, freg b, freg c) { return _mm256_fmadd_ps(a, b, c); }
};

#if defined(__AVX512F__)
struct ViFloat512 : ViPrefetch {
    using freg = __m512;
    static freg fzero() { return _mm512_setzero_ps(); }
    static freg fload(const float* p) { return _mm512_loadu_ps(p); }
    static void fstore(float* p, freg v) { _mm512_storeu_ps(p, v); }
    static freg fset1(float x) { return _mm512_set1_ps(x); }
    static freg fmul(freg a, freg b) { return _mm512_mul_ps(a, b); }
    static freg fadd(freg a, freg b) { return _mm512_add_ps(a, b); }
    static freg cvt(__m512i a) { return _mm512_cvtepi32_ps(a); }
    static freg fma(freg a, freg b, freg c) { return _mm512_fmadd_ps(a, b, c); }
};
#endif
