package io.streampersona.batch;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** The few MessagePack types a batch needs (array, str, bin, int, nil, bool), appended to a growable buffer. */
final class MsgPack {
    private byte[] buf = new byte[1024];
    private int len;

    int size() {
        return len;
    }

    void reset() {
        len = 0;
        if (buf.length > (1 << 20)) {
            buf = new byte[1024]; // one burst must not pin a large buffer per shard for good
        }
    }

    byte[] toArrayAfterHeader(int count) {
        byte[] out = new byte[len + 5];
        out[0] = (byte) 0xdd; // array 32
        out[1] = (byte) (count >>> 24);
        out[2] = (byte) (count >>> 16);
        out[3] = (byte) (count >>> 8);
        out[4] = (byte) count;
        System.arraycopy(buf, 0, out, 5, len);
        return out;
    }

    private void ensure(int more) {
        if (len + more > buf.length) {
            buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + more));
        }
    }

    private void put(int b) {
        buf[len++] = (byte) b;
    }

    private void put32(int v) {
        put(v >>> 24);
        put(v >>> 16);
        put(v >>> 8);
        put(v);
    }

    void arrayHeader(int n) {
        ensure(5);
        if (n < 16) {
            put(0x90 | n);
        } else {
            put(0xdd);
            put32(n);
        }
    }

    /** Appends {@code n} bytes that are already MessagePack (elements of another array). */
    void append(byte[] b, int off, int n) {
        ensure(n);
        System.arraycopy(b, off, buf, len, n);
        len += n;
    }

    void nil() {
        ensure(1);
        put(0xc0);
    }

    void bool(boolean v) {
        ensure(1);
        put(v ? 0xc3 : 0xc2);
    }

    void integer(long v) {
        ensure(9);
        put(0xd3); // int 64, big-endian
        for (int shift = 56; shift >= 0; shift -= 8) {
            put((int) (v >>> shift));
        }
    }

    void str(String s) {
        if (s == null) {
            nil();
            return;
        }
        raw(0xdb, s.getBytes(StandardCharsets.UTF_8)); // str 32
    }

    void bin(byte[] b) {
        if (b == null) {
            nil();
            return;
        }
        raw(0xc6, b); // bin 32
    }

    private void raw(int marker, byte[] b) {
        ensure(5 + b.length);
        put(marker);
        put32(b.length);
        System.arraycopy(b, 0, buf, len, b.length);
        len += b.length;
    }
}
