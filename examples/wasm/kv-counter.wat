;; kv-counter: increments the decimal counter under the key "counter" in the agent's
;; KV store (naos.kv_get / naos.kv_set), logs "counter=N" (naos.log, level 1 = info)
;; and prints N and a newline on stdout. Needs grants {"kv_get", "kv_set", "log"}.
;; Exit codes: 0 ok, 3 kv_get failed, 4 stored value too long, 5 kv_set failed,
;; 6 stored value is not a decimal number.
;; Memory: 0 iovec; 8 nwritten; 16 key; 32 "counter=" then the digits (40..);
;; 64..96 kv_get buffer; 100..128 scratch for formatting.
(module
  (import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "naos" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "naos" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "counter")
  (data (i32.const 32) "counter=")

  (func $parse (param $p i32) (param $len i32) (result i64)
    (local $v i64) (local $end i32) (local $c i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $digit
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
        (if (i32.gt_u (local.get $c) (i32.const 9))
          (then (call $proc_exit (i32.const 6))))
        (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
                               (i64.extend_i32_u (local.get $c))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (local.get $v))

  ;; Writes $v in decimal at $out; returns the number of digits.
  (func $format (param $v i64) (param $out i32) (result i32)
    (local $tmp i32) (local $len i32)
    (local.set $tmp (i32.const 128))
    (loop $digit
      (local.set $tmp (i32.sub (local.get $tmp) (i32.const 1)))
      (i64.store8 (local.get $tmp)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.set $len (i32.sub (i32.const 128) (local.get $tmp)))
    (memory.copy (local.get $out) (local.get $tmp) (local.get $len))
    (local.get $len))

  (func (export "_start")
    (local $r i32) (local $n i64) (local $len i32)
    (local.set $r (call $kv_get (i32.const 16) (i32.const 7) (i32.const 64) (i32.const 32)))
    (if (i32.ne (local.get $r) (i32.const -1))
      (then
        (if (i32.lt_s (local.get $r) (i32.const 0)) (then (call $proc_exit (i32.const 3))))
        (if (i32.gt_s (local.get $r) (i32.const 20)) (then (call $proc_exit (i32.const 4))))
        (local.set $n (call $parse (i32.const 64) (local.get $r)))))
    (local.set $n (i64.add (local.get $n) (i64.const 1)))
    (local.set $len (call $format (local.get $n) (i32.const 40)))
    (if (call $kv_set (i32.const 16) (i32.const 7) (i32.const 40) (local.get $len))
      (then (call $proc_exit (i32.const 5))))
    (drop (call $log (i32.const 1) (i32.const 32) (i32.add (i32.const 8) (local.get $len))))
    (i32.store8 (i32.add (i32.const 40) (local.get $len)) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 40))
    (i32.store (i32.const 4) (i32.add (local.get $len) (i32.const 1)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
