;; csv-total: a naos WASM skill (WASI preview1 command).
;; stdin:  the task text, e.g. "csv total: 12,30,-7\n4,5"
;; stdout: "total: 44 (5 numbers)\n" -- the sum of every integer in the text
;;         (a '-' right before digits makes the number negative).
;; Exit codes: 0 done, 1 stdout write failed, 2 stdin read failed,
;;             3 a number or the total does not fit in 64 bits, 4 no numbers.
;; Memory: 0 iovec {ptr, len}; 8 nread/nwritten; 64..127 the output text;
;;         1024.. the input buffer (63 KiB, read in chunks).
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "total: ")
  (data (i32.const 272) " numbers)\0a")
  (data (i32.const 288) " number)\0a")
  (data (i32.const 304) "csv-total: number too large\0a")
  (data (i32.const 336) "csv-total: no numbers in the input\0a")

  (global $total (mut i64) (i64.const 0))
  (global $count (mut i64) (i64.const 0))
  (global $cur (mut i64) (i64.const 0))
  (global $in_num (mut i32) (i32.const 0))
  (global $neg (mut i32) (i32.const 0))

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
        (br $more))))

  (func $fail (param $ptr i32) (param $len i32) (param $code i32)
    (call $write (i32.const 2) (local.get $ptr) (local.get $len))
    (call $proc_exit (local.get $code)))

  ;; end the number being read, if any: add it (checked) to the total
  (func $flush
    (local $n i64)
    (if (i32.eqz (global.get $in_num)) (then (return)))
    (local.set $n (global.get $cur))
    (if (global.get $neg) (then (local.set $n (i64.sub (i64.const 0) (local.get $n)))))
    ;; overflow of total + n: the signs of both operands agree and differ from the sum's
    (if (i64.lt_s
          (i64.and (i64.xor (global.get $total) (i64.add (global.get $total) (local.get $n)))
                   (i64.xor (local.get $n) (i64.add (global.get $total) (local.get $n))))
          (i64.const 0))
      (then (call $fail (i32.const 304) (i32.const 28) (i32.const 3))))
    (global.set $total (i64.add (global.get $total) (local.get $n)))
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (global.set $cur (i64.const 0))
    (global.set $in_num (i32.const 0)))

  (func $byte (param $c i32)
    (if (i32.lt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 10))
      (then
        ;; cur * 10 + d must stay below 2^63
        (if (i64.gt_u (global.get $cur) (i64.const 922337203685477579))
          (then (call $fail (i32.const 304) (i32.const 28) (i32.const 3))))
        (global.set $cur (i64.add (i64.mul (global.get $cur) (i64.const 10))
                                  (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (global.set $in_num (i32.const 1))
        (return)))
    (call $flush)
    (global.set $neg (i32.eq (local.get $c) (i32.const 45))))

  ;; writes the decimal text of $v ending just before $end; returns its start
  (func $itoa (param $v i64) (param $end i32) (result i32)
    (local $p i32) (local $u i64) (local $minus i32)
    (local.set $p (local.get $end))
    (local.set $u (local.get $v))
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then (local.set $minus (i32.const 1))
            (local.set $u (i64.sub (i64.const 0) (local.get $v)))))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $u) (i64.const 10)))))
      (local.set $u (i64.div_u (local.get $u) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $u) (i64.const 0))))
    (if (local.get $minus)
      (then (local.set $p (i32.sub (local.get $p) (i32.const 1)))
            (i32.store8 (local.get $p) (i32.const 45))))
    (local.get $p))

  (func (export "_start")
    (local $n i32) (local $i i32) (local $start i32)
    (loop $read
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 64512))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 2))))
      (local.set $n (i32.load (i32.const 8)))
      (local.set $i (i32.const 0))
      (block $chunk_done
        (loop $each
          (br_if $chunk_done (i32.ge_u (local.get $i) (local.get $n)))
          (call $byte (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each)))
      (br_if $read (local.get $n)))
    (call $flush)
    (if (i64.eqz (global.get $count))
      (then (call $fail (i32.const 336) (i32.const 35) (i32.const 4))))
    (call $write (i32.const 1) (i32.const 256) (i32.const 7))
    (local.set $start (call $itoa (global.get $total) (i32.const 96)))
    (call $write (i32.const 1) (local.get $start) (i32.sub (i32.const 96) (local.get $start)))
    (i32.store8 (i32.const 96) (i32.const 32))
    (i32.store8 (i32.const 97) (i32.const 40))
    (call $write (i32.const 1) (i32.const 96) (i32.const 2))
    (local.set $start (call $itoa (global.get $count) (i32.const 128)))
    (call $write (i32.const 1) (local.get $start) (i32.sub (i32.const 128) (local.get $start)))
    (if (i64.eq (global.get $count) (i64.const 1))
      (then (call $write (i32.const 1) (i32.const 288) (i32.const 9)))
      (else (call $write (i32.const 1) (i32.const 272) (i32.const 10))))))
