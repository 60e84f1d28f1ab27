/*
 * sum: a naos WASM guest (WASI preview1 command) written in C.
 *
 * stdin:  {"records":[{"id":"a","amount_cents":1250},{"id":"b","amount_cents":-50}]}
 * stdout: {"total_cents":1200,"count":2}
 *
 * Every record must be an object with a string "id" and an integer "amount_cents";
 * other keys are skipped. Exit codes: 0 ok, 2 invalid input (the reason on stderr),
 * 3 the total overflows 64 bits, 4 out of memory.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t len, pos;
} Parser;

static _Noreturn void fail(const Parser *p, const char *what) {
    fprintf(stderr, "sum: %s at byte %zu\n", what, p->pos);
    exit(2);
}

static void skip_ws(Parser *p) {
    while (p->pos < p->len && strchr(" \t\r\n", p->s[p->pos]) && p->s[p->pos])
        p->pos++;
}

static bool peek(Parser *p, char c) {
    skip_ws(p);
    return p->pos < p->len && p->s[p->pos] == c;
}

static void expect(Parser *p, char c) {
    if (!peek(p, c)) {
        char msg[32];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        fail(p, msg);
    }
    p->pos++;
}

/* Parses a string; returns whether it equals `want` (NULL: just skip it). */
static bool string_equals(Parser *p, const char *want) {
    expect(p, '"');
    size_t wlen = want ? strlen(want) : 0, i = 0;
    bool same = want != NULL;
    while (p->pos < p->len && p->s[p->pos] != '"') {
        char c = p->s[p->pos++];
        if ((unsigned char)c < 0x20) fail(p, "control character in string");
        if (c == '\\') {
            if (p->pos >= p->len) break;
            char e = p->s[p->pos++];
            if (e == 'u') {
                for (int k = 0; k < 4; k++, p->pos++)
                    if (p->pos >= p->len || !strchr("0123456789abcdefABCDEF", p->s[p->pos]))
                        fail(p, "bad \\u escape");
                same = false; /* our keys are plain ASCII */
                continue;
            }
            if (!strchr("\"\\/bfnrt", e)) fail(p, "bad escape");
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b'
              : e == 'f' ? '\f' : e;
        }
        same = same && i < wlen && want[i] == c;
        i++;
    }
    if (p->pos >= p->len) fail(p, "unterminated string");
    p->pos++;
    return same && i == wlen;
}

/* Parses a JSON integer (no fraction or exponent) into *out. */
static void integer(Parser *p, int64_t *out) {
    skip_ws(p);
    bool neg = p->pos < p->len && p->s[p->pos] == '-';
    if (neg) p->pos++;
    size_t start = p->pos;
    uint64_t v = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        uint64_t d = (uint64_t)(p->s[p->pos++] - '0');
        if (v > (UINT64_C(9223372036854775808) - d) / 10) fail(p, "integer too large");
        v = v * 10 + d;
    }
    if (p->pos == start) fail(p, "expected an integer");
    if (p->pos < p->len && strchr(".eE", p->s[p->pos])) fail(p, "amount must be an integer");
    if (!neg && v > INT64_MAX) fail(p, "integer too large");
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
}

static void skip_value(Parser *p, int depth);

static void skip_container(Parser *p, char open, char close, int depth) {
    expect(p, open);
    if (peek(p, close)) { p->pos++; return; }
    do {
        if (open == '{') { string_equals(p, NULL); expect(p, ':'); }
        skip_value(p, depth + 1);
    } while (peek(p, ',') && ++p->pos);
    expect(p, close);
}

static void skip_value(Parser *p, int depth) {
    if (depth > 64) fail(p, "nesting too deep");
    skip_ws(p);
    if (p->pos >= p->len) fail(p, "unexpected end of input");
    char c = p->s[p->pos];
    if (c == '{') { skip_container(p, '{', '}', depth); return; }
    if (c == '[') { skip_container(p, '[', ']', depth); return; }
    if (c == '"') { string_equals(p, NULL); return; }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, words[i], n) == 0) {
            p->pos += n;
            return;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        p->pos++;
        while (p->pos < p->len && strchr("0123456789.eE+-", p->s[p->pos]) && p->s[p->pos])
            p->pos++;
        return;
    }
    fail(p, "unexpected character");
}

static void record(Parser *p, int64_t *total) {
    bool has_id = false, has_amount = false;
    int64_t amount = 0;
    expect(p, '{');
    if (!peek(p, '}')) {
        do {
            bool is_id = false, is_amount = false;
            skip_ws(p);
            size_t key_at = p->pos;
            is_id = string_equals(p, "id");
            if (!is_id) { p->pos = key_at; is_amount = string_equals(p, "amount_cents"); }
            expect(p, ':');
            if (is_id) {
                if (!peek(p, '"')) fail(p, "id must be a string");
                string_equals(p, NULL);
                has_id = true;
            } else if (is_amount) {
                integer(p, &amount);
                has_amount = true;
            } else {
                skip_value(p, 2);
            }
        } while (peek(p, ',') && ++p->pos);
    }
    expect(p, '}');
    if (!has_id) fail(p, "record without \"id\"");
    if (!has_amount) fail(p, "record without \"amount_cents\"");
    if (__builtin_add_overflow(*total, amount, total)) {
        fputs("sum: total overflows 64 bits\n", stderr);
        exit(3);
    }
}

static int64_t records(Parser *p, int64_t *count) {
    int64_t total = 0;
    expect(p, '[');
    if (peek(p, ']')) { p->pos++; return 0; }
    do {
        record(p, &total);
        (*count)++;
    } while (peek(p, ',') && ++p->pos);
    expect(p, ']');
    return total;
}

static char *read_all(size_t *len) {
    size_t cap = 4096;
    char *buf = malloc(cap);
    *len = 0;
    for (size_t n; buf && (n = fread(buf + *len, 1, cap - *len, stdin)) > 0;) {
        *len += n;
        if (*len == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf) {
        fputs("sum: out of memory\n", stderr);
        exit(4);
    }
    return buf;
}

int main(void) {
    Parser p = {0};
    p.s = read_all(&p.len);
    int64_t total = 0, count = 0;
    bool seen = false;
    expect(&p, '{');
    if (!peek(&p, '}')) {
        do {
            bool is_records = string_equals(&p, "records");
            expect(&p, ':');
            if (is_records) {
                total = records(&p, &count);
                seen = true;
            } else {
                skip_value(&p, 1);
            }
        } while (peek(&p, ',') && ++p.pos);
    }
    expect(&p, '}');
    skip_ws(&p);
    if (p.pos != p.len) fail(&p, "trailing data");
    if (!seen) fail(&p, "no \"records\" array");
    printf("{\"total_cents\":%lld,\"count\":%lld}\n", (long long)total, (long long)count);
    return 0;
}
