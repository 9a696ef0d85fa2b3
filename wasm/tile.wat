;; Inner loops of the reference backend (src/reference/wasm.ts): one 64-token attention tile.
;; All buffers are fp32 in the imported memory; addresses and strides are in bytes unless named
;; otherwise. `(FMA a b c)` = a·b + c: scripts/build-wasm.mjs expands it to f32x4.mul + f32x4.add
;; (tile-simd.wasm) or to f32x4.relaxed_madd (tile-relaxed.wasm).
(module
  (import "env" "mem" (memory 1))

  ;; dst[t][d] = f32(bf16 src[t·ld + d]) for t < tokens, d < dim (dim % 8 == 0, ld in elements).
  (func (export "cvt_bf16") (param $src i32) (param $ld i32) (param $tokens i32) (param $dim i32) (param $dst i32)
    (local $s i32) (local $e i32) (local $v v128)
    (block $done
      (loop $row
        (br_if $done (i32.eqz (local.get $tokens)))
        (local.set $s (local.get $src))
        (local.set $e (i32.add (local.get $src) (i32.shl (local.get $dim) (i32.const 1))))
        (loop $col
          (local.set $v (v128.load (local.get $s)))
          (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)))
          (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)))
          (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
          (local.set $s (i32.add (local.get $s) (i32.const 16)))
          (br_if $col (i32.lt_u (local.get $s) (local.get $e))))
        (local.set $src (i32.add (local.get $src) (i32.shl (local.get $ld) (i32.const 1))))
        (local.set $tokens (i32.sub (local.get $tokens) (i32.const 1)))
        (br $row))))

  ;; Four e4m3fn codes (one per i32 lane) → fp32, times the tile scale, rounded to bf16 (docs/flashmla-interface.md#quantization:
  ;; the kernels dequantise to bf16; exact for power-of-two scales). The magnitude bits placed at
  ;; bit 20 form a float32 2^120 times too small, subnormals included; 0x7F is NaN.
  (func $e4m3 (param $b v128) (param $scale v128) (result v128)
    (local $mag v128) (local $x v128)
    (local.set $mag (v128.and (local.get $b) (i32x4.splat (i32.const 0x7f))))
    (local.set $x (f32x4.mul (i32x4.shl (local.get $mag) (i32.const 20)) (f32x4.splat (f32.const 0x1p120))))
    (local.set $x (v128.bitselect (i32x4.splat (i32.const 0x7fc00000)) (local.get $x)
      (i32x4.eq (local.get $mag) (i32x4.splat (i32.const 0x7f)))))
    (local.set $x (v128.or (local.get $x) (i32x4.shl (v128.and (local.get $b) (i32x4.splat (i32.const 0x80))) (i32.const 24))))
    (local.set $x (f32x4.mul (local.get $x) (local.get $scale)))
    ;; float32 → bf16 round-to-nearest-even, kept as float32 bits.
    (v128.and
      (i32x4.add (i32x4.add (local.get $x) (i32x4.splat (i32.const 0x7fff)))
        (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (i32x4.splat (i32.const 1))))
      (i32x4.splat (i32.const 0xffff0000))))

  ;; Dequantises `tokens` FP8 token records (record t at src + t·ld) into dst[t][0 … dim):
  ;; `tiles` tiles of `tile` e4m3 codes from byte 0, one float32 scale per tile at `scales`,
  ;; then dim − tiles·tile bf16 values at `rope` (docs/flashmla-interface.md#v32-cache V32; docs/flashmla-interface.md#model1-cache MODEL1 after staging).
  (func (export "dq_fp8") (param $src i32) (param $ld i32) (param $tokens i32) (param $tiles i32) (param $tile i32)
    (param $scales i32) (param $rope i32) (param $dim i32) (param $dst i32)
    (local $j i32) (local $p i32) (local $e i32) (local $scale v128) (local $v v128) (local $lo v128) (local $hi v128)
    (block $done
      (loop $token
        (br_if $done (i32.eqz (local.get $tokens)))
        (local.set $p (local.get $src))
        (local.set $j (i32.const 0))
        (loop $tileLoop
          (local.set $scale (v128.load32_splat (i32.add (i32.add (local.get $src) (local.get $scales)) (i32.shl (local.get $j) (i32.const 2)))))
          (local.set $e (i32.add (local.get $p) (local.get $tile)))
          (loop $codes
            (local.set $v (v128.load (local.get $p)))
            (local.set $lo (i16x8.extend_low_i8x16_u (local.get $v)))
            (local.set $hi (i16x8.extend_high_i8x16_u (local.get $v)))
            (v128.store (local.get $dst) (call $e4m3 (i32x4.extend_low_i16x8_u (local.get $lo)) (local.get $scale)))
            (v128.store offset=16 (local.get $dst) (call $e4m3 (i32x4.extend_high_i16x8_u (local.get $lo)) (local.get $scale)))
            (v128.store offset=32 (local.get $dst) (call $e4m3 (i32x4.extend_low_i16x8_u (local.get $hi)) (local.get $scale)))
            (v128.store offset=48 (local.get $dst) (call $e4m3 (i32x4.extend_high_i16x8_u (local.get $hi)) (local.get $scale)))
            (local.set $dst (i32.add (local.get $dst) (i32.const 64)))
            (local.set $p (i32.add (local.get $p) (i32.const 16)))
            (br_if $codes (i32.lt_u (local.get $p) (local.get $e))))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $tileLoop (i32.lt_u (local.get $j) (local.get $tiles))))
        ;; RoPE: bf16 → f32, 8 at a time.
        (local.set $p (i32.add (local.get $src) (local.get $rope)))
        (local.set $e (i32.add (local.get $p) (i32.shl (i32.sub (local.get $dim) (i32.mul (local.get $tiles) (local.get $tile))) (i32.const 1))))
        (loop $rp
          (local.set $v (v128.load (local.get $p)))
          (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)))
          (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)))
          (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
          (local.set $p (i32.add (local.get $p) (i32.const 16)))
          (br_if $rp (i32.lt_u (local.get $p) (local.get $e))))
        (local.set $src (i32.add (local.get $src) (local.get $ld)))
        (local.set $tokens (i32.sub (local.get $tokens) (i32.const 1)))
        (br $token))))

  (func $hsum (param $v v128) (result f32)
    (local.set $v (f32x4.add (local.get $v) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))))
    (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v))))

  ;; s[r][t] = Σ_d q[r][d]·k[t][d], blocked 4 rows × 2 tokens (8 accumulators: each Q and K vector
  ;; loaded serves two or four products). rows % 4 == 0, tokens % 2 == 0, dim % 4 == 0;
  ;; q is rows × dim, k is tokens × dim (fp32, dense), s has row stride ldS floats.
  (func (export "qk") (param $q i32) (param $rows i32) (param $k i32) (param $tokens i32) (param $dim i32) (param $s i32) (param $ldS i32)
    (local $rb i32) (local $t i32) (local $row i32) (local $k0 i32) (local $k1 i32) (local $o i32) (local $qr i32) (local $sp i32)
    (local $y0 v128) (local $y1 v128) (local $x v128)
    (local $a00 v128) (local $a01 v128) (local $a10 v128) (local $a11 v128)
    (local $a20 v128) (local $a21 v128) (local $a30 v128) (local $a31 v128)
    (local.set $row (i32.shl (local.get $dim) (i32.const 2)))
    (local.set $ldS (i32.shl (local.get $ldS) (i32.const 2)))
    (local.set $rb (i32.const 0))
    (block $rowsDone
      (loop $rowBlock
        (br_if $rowsDone (i32.ge_u (local.get $rb) (local.get $rows)))
        (local.set $qr (i32.add (local.get $q) (i32.mul (local.get $rb) (local.get $row))))
        (local.set $t (i32.const 0))
        (block $tokDone
          (loop $tokPair
            (br_if $tokDone (i32.ge_u (local.get $t) (local.get $tokens)))
            (local.set $k0 (i32.add (local.get $k) (i32.mul (local.get $t) (local.get $row))))
            (local.set $k1 (i32.add (local.get $k0) (local.get $row)))
            (local.set $a00 (v128.const i32x4 0 0 0 0)) (local.set $a01 (v128.const i32x4 0 0 0 0))
            (local.set $a10 (v128.const i32x4 0 0 0 0)) (local.set $a11 (v128.const i32x4 0 0 0 0))
            (local.set $a20 (v128.const i32x4 0 0 0 0)) (local.set $a21 (v128.const i32x4 0 0 0 0))
            (local.set $a30 (v128.const i32x4 0 0 0 0)) (local.set $a31 (v128.const i32x4 0 0 0 0))
            (local.set $o (i32.const 0))
            (loop $d
              (local.set $y0 (v128.load (i32.add (local.get $k0) (local.get $o))))
              (local.set $y1 (v128.load (i32.add (local.get $k1) (local.get $o))))
              (local.set $sp (i32.add (local.get $qr) (local.get $o)))
              (local.set $x (v128.load (local.get $sp)))
              (local.set $a00 (FMA (local.get $x) (local.get $y0) (local.get $a00)))
              (local.set $a01 (FMA (local.get $x) (local.get $y1) (local.get $a01)))
              (local.set $sp (i32.add (local.get $sp) (local.get $row)))
              (local.set $x (v128.load (local.get $sp)))
              (local.set $a10 (FMA (local.get $x) (local.get $y0) (local.get $a10)))
              (local.set $a11 (FMA (local.get $x) (local.get $y1) (local.get $a11)))
              (local.set $sp (i32.add (local.get $sp) (local.get $row)))
              (local.set $x (v128.load (local.get $sp)))
              (local.set $a20 (FMA (local.get $x) (local.get $y0) (local.get $a20)))
              (local.set $a21 (FMA (local.get $x) (local.get $y1) (local.get $a21)))
              (local.set $sp (i32.add (local.get $sp) (local.get $row)))
              (local.set $x (v128.load (local.get $sp)))
              (local.set $a30 (FMA (local.get $x) (local.get $y0) (local.get $a30)))
              (local.set $a31 (FMA (local.get $x) (local.get $y1) (local.get $a31)))
              (local.set $o (i32.add (local.get $o) (i32.const 16)))
              (br_if $d (i32.lt_u (local.get $o) (local.get $row))))
            (local.set $sp (i32.add (local.get $s) (i32.add (i32.mul (local.get $rb) (local.get $ldS)) (i32.shl (local.get $t) (i32.const 2)))))
            (f32.store (local.get $sp) (call $hsum (local.get $a00)))
            (f32.store offset=4 (local.get $sp) (call $hsum (local.get $a01)))
            (local.set $sp (i32.add (local.get $sp) (local.get $ldS)))
            (f32.store (local.get $sp) (call $hsum (local.get $a10)))
            (f32.store offset=4 (local.get $sp) (call $hsum (local.get $a11)))
            (local.set $sp (i32.add (local.get $sp) (local.get $ldS)))
            (f32.store (local.get $sp) (call $hsum (local.get $a20)))
            (f32.store offset=4 (local.get $sp) (call $hsum (local.get $a21)))
            (local.set $sp (i32.add (local.get $sp) (local.get $ldS)))
            (f32.store (local.get $sp) (call $hsum (local.get $a30)))
            (f32.store offset=4 (local.get $sp) (call $hsum (local.get $a31)))
            (local.set $t (i32.add (local.get $t) (i32.const 2)))
            (br $tokPair)))
        (local.set $rb (i32.add (local.get $rb) (i32.const 4)))
        (br $rowBlock))))

  ;; o[r][x] += Σ_t p[r][t]·v[t][x] with v[t] = k + t·dim floats; blocked 4 rows × 8 columns
  ;; (8 accumulators held over all tokens). rows % 4 == 0, dv % 8 == 0; p has row stride ldP floats.
  (func (export "pv") (param $p i32) (param $rows i32) (param $ldP i32) (param $k i32) (param $tokens i32) (param $dim i32) (param $dv i32) (param $o i32)
    (local $rb i32) (local $x i32) (local $t i32) (local $ldO i32) (local $pr i32) (local $vp i32) (local $op i32) (local $pe i32)
    (local $v0 v128) (local $v1 v128) (local $w v128)
    (local $a00 v128) (local $a01 v128) (local $a10 v128) (local $a11 v128)
    (local $a20 v128) (local $a21 v128) (local $a30 v128) (local $a31 v128)
    (local.set $dim (i32.shl (local.get $dim) (i32.const 2)))
    (local.set $ldP (i32.shl (local.get $ldP) (i32.const 2)))
    (local.set $ldO (i32.shl (local.get $dv) (i32.const 2)))
    (local.set $rb (i32.const 0))
    (block $rowsDone
      (loop $rowBlock
        (br_if $rowsDone (i32.ge_u (local.get $rb) (local.get $rows)))
        (local.set $pr (i32.add (local.get $p) (i32.mul (local.get $rb) (local.get $ldP))))
        (local.set $x (i32.const 0))
        (loop $col
          (local.set $op (i32.add (i32.add (local.get $o) (i32.mul (local.get $rb) (local.get $ldO))) (local.get $x)))
          (local.set $a00 (v128.load (local.get $op)))
          (local.set $a01 (v128.load offset=16 (local.get $op)))
          (local.set $a10 (v128.load (i32.add (local.get $op) (local.get $ldO))))
          (local.set $a11 (v128.load offset=16 (i32.add (local.get $op) (local.get $ldO))))
          (local.set $a20 (v128.load (i32.add (local.get $op) (i32.shl (local.get $ldO) (i32.const 1)))))
          (local.set $a21 (v128.load offset=16 (i32.add (local.get $op) (i32.shl (local.get $ldO) (i32.const 1)))))
          (local.set $a30 (v128.load (i32.add (local.get $op) (i32.mul (local.get $ldO) (i32.const 3)))))
          (local.set $a31 (v128.load offset=16 (i32.add (local.get $op) (i32.mul (local.get $ldO) (i32.const 3)))))
          (local.set $vp (i32.add (local.get $k) (local.get $x)))
          (local.set $t (local.get $pr))
          (local.set $pe (i32.add (local.get $pr) (i32.shl (local.get $tokens) (i32.const 2))))
          (block $tokDone
            (loop $tok
              (br_if $tokDone (i32.ge_u (local.get $t) (local.get $pe)))
              (local.set $v0 (v128.load (local.get $vp)))
              (local.set $v1 (v128.load offset=16 (local.get $vp)))
              (local.set $w (v128.load32_splat (local.get $t)))
              (local.set $a00 (FMA (local.get $w) (local.get $v0) (local.get $a00)))
              (local.set $a01 (FMA (local.get $w) (local.get $v1) (local.get $a01)))
              (local.set $w (v128.load32_splat (i32.add (local.get $t) (local.get $ldP))))
              (local.set $a10 (FMA (local.get $w) (local.get $v0) (local.get $a10)))
              (local.set $a11 (FMA (local.get $w) (local.get $v1) (local.get $a11)))
              (local.set $w (v128.load32_splat (i32.add (local.get $t) (i32.shl (local.get $ldP) (i32.const 1)))))
              (local.set $a20 (FMA (local.get $w) (local.get $v0) (local.get $a20)))
              (local.set $a21 (FMA (local.get $w) (local.get $v1) (local.get $a21)))
              (local.set $w (v128.load32_splat (i32.add (local.get $t) (i32.mul (local.get $ldP) (i32.const 3)))))
              (local.set $a30 (FMA (local.get $w) (local.get $v0) (local.get $a30)))
              (local.set $a31 (FMA (local.get $w) (local.get $v1) (local.get $a31)))
              (local.set $vp (i32.add (local.get $vp) (local.get $dim)))
              (local.set $t (i32.add (local.get $t) (i32.const 4)))
              (br $tok)))
          (v128.store (local.get $op) (local.get $a00))
          (v128.store offset=16 (local.get $op) (local.get $a01))
          (v128.store (i32.add (local.get $op) (local.get $ldO)) (local.get $a10))
          (v128.store offset=16 (i32.add (local.get $op) (local.get $ldO)) (local.get $a11))
          (v128.store (i32.add (local.get $op) (i32.shl (local.get $ldO) (i32.const 1))) (local.get $a20))
          (v128.store offset=16 (i32.add (local.get $op) (i32.shl (local.get $ldO) (i32.const 1))) (local.get $a21))
          (v128.store (i32.add (local.get $op) (i32.mul (local.get $ldO) (i32.const 3))) (local.get $a30))
          (v128.store offset=16 (i32.add (local.get $op) (i32.mul (local.get $ldO) (i32.const 3))) (local.get $a31))
          (local.set $x (i32.add (local.get $x) (i32.const 32)))
          (br_if $col (i32.lt_u (local.get $x) (local.get $ldO))))
        (local.set $rb (i32.add (local.get $rb) (i32.const 4)))
        (br $rowBlock))))

  ;; 2^x per lane (Cephes exp2f polynomial on the fraction, ~2e-7 relative); 0 below −126, so
  ;; −Infinity (masked logits, an empty running max) gives exact zeros.
  (func $exp2 (param $x v128) (result v128)
    (local $n v128) (local $f v128) (local $p v128)
    (local.set $n (f32x4.nearest (local.get $x)))
    (local.set $f (f32x4.sub (local.get $x) (local.get $n)))
    (local.set $p (FMA (local.get $f) (f32x4.splat (f32.const 1.535336188319500e-4)) (f32x4.splat (f32.const 1.339887440266574e-3))))
    (local.set $p (FMA (local.get $f) (local.get $p) (f32x4.splat (f32.const 9.618437357674640e-3))))
    (local.set $p (FMA (local.get $f) (local.get $p) (f32x4.splat (f32.const 5.550332471162809e-2))))
    (local.set $p (FMA (local.get $f) (local.get $p) (f32x4.splat (f32.const 2.402264791363012e-1))))
    (local.set $p (FMA (local.get $f) (local.get $p) (f32x4.splat (f32.const 6.931472028550421e-1))))
    (local.set $p (FMA (local.get $f) (local.get $p) (f32x4.splat (f32.const 1))))
    (local.set $p (f32x4.mul (local.get $p)
      (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $n)) (i32x4.splat (i32.const 127))) (i32.const 23))))
    (v128.andnot (local.get $p) (f32x4.lt (local.get $x) (f32x4.splat (f32.const -126)))))

  ;; Online softmax (base 2, docs/flashmla-interface.md#split-kv) over one tile, per row r < rows: logits s[r][t]·scale for
  ;; t < vis[r], −Infinity otherwise (t < tokens4, a multiple of 4); then s ← 2^(s − m_new),
  ;; l ← l·2^(m_old − m_new) + Σ s, o[r] ← o[r]·2^(m_old − m_new). A row with nothing visible
  ;; gets zero probabilities and keeps its state. With $roundP ≠ 0 the stored probabilities are
  ;; rounded to bf16 (nearest even) while l sums them unrounded, as the sparse prefill kernels do
  ;; (docs/reference-backend.md#prefill).
  (func (export "softmax") (param $s i32) (param $rows i32) (param $ldS i32) (param $tokens4 i32) (param $vis i32)
    (param $scale f32) (param $m i32) (param $l i32) (param $o i32) (param $dv i32) (param $roundP i32)
    (local $r i32) (local $sp i32) (local $se i32) (local $lane v128) (local $lim v128) (local $x v128) (local $mx v128) (local $sum v128)
    (local $mt f32) (local $mOld f32) (local $mNew f32) (local $alpha v128) (local $op i32) (local $oe i32)
    (local.set $ldS (i32.shl (local.get $ldS) (i32.const 2)))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $sp (i32.add (local.get $s) (i32.mul (local.get $r) (local.get $ldS))))
        (local.set $se (i32.add (local.get $sp) (i32.shl (local.get $tokens4) (i32.const 2))))
        (local.set $lim (i32x4.splat (i32.load (i32.add (local.get $vis) (i32.shl (local.get $r) (i32.const 2))))))
        (local.set $lane (v128.const i32x4 0 1 2 3))
        (local.set $mx (f32x4.splat (f32.const -inf)))
        (block $maskDone
          (loop $mask
            (br_if $maskDone (i32.ge_u (local.get $sp) (local.get $se)))
            (local.set $x (v128.bitselect
              (f32x4.mul (v128.load (local.get $sp)) (f32x4.splat (local.get $scale)))
              (f32x4.splat (f32.const -inf))
              (i32x4.lt_s (local.get $lane) (local.get $lim))))
            (v128.store (local.get $sp) (local.get $x))
            (local.set $mx (f32x4.max (local.get $mx) (local.get $x)))
            (local.set $lane (i32x4.add (local.get $lane) (i32x4.splat (i32.const 4))))
            (local.set $sp (i32.add (local.get $sp) (i32.const 16)))
            (br $mask)))
        (local.set $mx (f32x4.max (local.get $mx) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $mx) (local.get $mx))))
        (local.set $mt (f32.max (f32x4.extract_lane 0 (local.get $mx)) (f32x4.extract_lane 1 (local.get $mx))))
        (local.set $sp (i32.sub (local.get $se) (i32.shl (local.get $tokens4) (i32.const 2))))
        (if (f32.eq (local.get $mt) (f32.const -inf))
          (then (memory.fill (local.get $sp) (i32.const 0) (i32.shl (local.get $tokens4) (i32.const 2))))
          (else
            (local.set $mOld (f32.load (i32.add (local.get $m) (i32.shl (local.get $r) (i32.const 2)))))
            (local.set $mNew (f32.max (local.get $mt) (local.get $mOld)))
            (local.set $sum (v128.const i32x4 0 0 0 0))
            (loop $e
              (local.set $x (call $exp2 (f32x4.sub (v128.load (local.get $sp)) (f32x4.splat (local.get $mNew)))))
              (v128.store (local.get $sp) (if (result v128) (local.get $roundP)
                (then (v128.and
                  (i32x4.add (i32x4.add (local.get $x) (i32x4.splat (i32.const 0x7fff)))
                    (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (i32x4.splat (i32.const 1))))
                  (i32x4.splat (i32.const 0xffff0000))))
                (else (local.get $x))))
              (local.set $sum (f32x4.add (local.get $sum) (local.get $x)))
              (local.set $sp (i32.add (local.get $sp) (i32.const 16)))
              (br_if $e (i32.lt_u (local.get $sp) (local.get $se))))
            (local.set $op (i32.add (local.get $l) (i32.shl (local.get $r) (i32.const 2))))
            (if (f32.ne (local.get $mNew) (local.get $mOld))
              (then
                (local.set $alpha (call $exp2 (f32x4.splat (f32.sub (local.get $mOld) (local.get $mNew)))))
                (f32.store (local.get $op) (f32.mul (f32.load (local.get $op)) (f32x4.extract_lane 0 (local.get $alpha))))
                (f32.store (i32.add (local.get $m) (i32.shl (local.get $r) (i32.const 2))) (local.get $mNew))
                (local.set $sp (i32.add (local.get $o) (i32.shl (i32.mul (local.get $r) (local.get $dv)) (i32.const 2))))
                (local.set $oe (i32.add (local.get $sp) (i32.shl (local.get $dv) (i32.const 2))))
                (loop $scaleO
                  (v128.store (local.get $sp) (f32x4.mul (v128.load (local.get $sp)) (local.get $alpha)))
                  (local.set $sp (i32.add (local.get $sp) (i32.const 16)))
                  (br_if $scaleO (i32.lt_u (local.get $sp) (local.get $oe))))))
            (f32.store (local.get $op) (f32.add (f32.load (local.get $op)) (call $hsum (local.get $sum))))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))
)
