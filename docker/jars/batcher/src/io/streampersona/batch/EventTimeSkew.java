package io.streampersona.batch;

import java.nio.charset.StandardCharsets;
import java.time.DateTimeException;
import java.time.Instant;
import java.time.LocalDate;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * SQL {@code PERSONA_TIME_SKEW_S(value BYTES, ts TIMESTAMP_LTZ(3)) -> BIGINT}: how far, in whole seconds, a Kafka
 * record's timestamp is from the {@code event_time} the record itself carries; {@code Long.MAX_VALUE} when the
 * record has no readable {@code event_time}. The source's watermark trusts a timestamp only within a bound of it
 * (jobs/kafka_io.py {@code _trusted_timestamp}; docs/behaviour.md "Event time and lateness").
 *
 * <p>Both times count to the second: the event time without its fraction, the Kafka timestamp floored. The event
 * time is the first {@code "event_time"} member whose value is a string of 20 to 40 characters of
 * {@code [0-9Tt:.+Zz-]}, read as RFC 3339 with a mandatory UTC offset (the contract's pattern,
 * schemas/event.v1.json). It replaces SQL built-ins that cost ~14 µs per record, twice (in the watermark generator
 * and in the query): a regular-expression extraction, an upper-casing, a replacement by a regular expression
 * compiled at each call, and two parses through {@code SimpleDateFormat}. Those parsed leniently (a 31 November
 * was 1 December); this reads strictly, so a date the contract refuses never moves the watermark.
 */
public final class EventTimeSkew extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    private static final byte[] NAME = "\"event_time\"".getBytes(StandardCharsets.US_ASCII);
    private static final int MIN_CHARS = 20;
    private static final int MAX_CHARS = 40;

    public long eval(byte[] value, Instant ts) {
        if (value == null || ts == null) {
            return Long.MAX_VALUE;
        }
        long event = eventTimeSeconds(value);
        if (event == Long.MIN_VALUE) {
            return Long.MAX_VALUE;
        }
        return Math.abs(event - Math.floorDiv(ts.toEpochMilli(), 1000L));
    }

    /** The record's event time in epoch seconds, or {@code Long.MIN_VALUE} when it has none that reads. */
    public static long eventTimeSeconds(byte[] v) {
        for (int at = indexOf(v, NAME, 0); at >= 0; at = indexOf(v, NAME, at + 1)) {
            int i = skipSpace(v, at + NAME.length);
            if (i >= v.length || v[i] != ':') {
                continue;
            }
            i = skipSpace(v, i + 1);
            if (i >= v.length || v[i] != '"') {
                continue;
            }
            int start = i + 1;
            int end = start;
            while (end < v.length && isTimeChar(v[end])) {
                end++;
            }
            int n = end - start;
            if (end < v.length && v[end] == '"' && n >= MIN_CHARS && n <= MAX_CHARS) {
                return parse(v, start, end);   // the first such member decides, as a regular expression's first match
            }
        }
        return Long.MIN_VALUE;
    }

    private static boolean isTimeChar(byte b) {
        return (b >= '0' && b <= '9') || b == 'T' || b == 't' || b == ':' || b == '.' || b == '+' || b == 'Z'
                || b == 'z' || b == '-';
    }

    private static int skipSpace(byte[] v, int i) {
        while (i < v.length && (v[i] == ' ' || v[i] == '\t' || v[i] == '\n' || v[i] == '\r' || v[i] == 0x0B
                || v[i] == '\f')) {
            i++;
        }
        return i;
    }

    private static int indexOf(byte[] v, byte[] what, int from) {
        outer:
        for (int i = from; i <= v.length - what.length; i++) {
            for (int j = 0; j < what.length; j++) {
                if (v[i + j] != what[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }

    /** {@code yyyy-MM-ddTHH:mm:ss[.fraction](Z|+HH:MM|-HH:MM)} in {@code v[start, end)}, else Long.MIN_VALUE. */
    static long parse(byte[] v, int start, int end) {
        int i = start;
        int year = digits(v, i, 4);
        int month = sep(v, i + 4, '-') ? digits(v, i + 5, 2) : -1;
        int day = sep(v, i + 7, '-') ? digits(v, i + 8, 2) : -1;
        boolean t = i + 10 < end && (v[i + 10] == 'T' || v[i + 10] == 't');
        int hour = t ? digits(v, i + 11, 2) : -1;
        int minute = sep(v, i + 13, ':') ? digits(v, i + 14, 2) : -1;
        int second = sep(v, i + 16, ':') ? digits(v, i + 17, 2) : -1;
        if (year < 0 || month < 1 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0
                || second > 59) {
            return Long.MIN_VALUE;
        }
        i += 19;
        if (i < end && v[i] == '.') {
            int digitsStart = ++i;
            while (i < end && v[i] >= '0' && v[i] <= '9') {
                i++;
            }
            if (i == digitsStart) {
                return Long.MIN_VALUE;
            }
        }
        long offsetSeconds;
        if (i + 1 == end && (v[i] == 'Z' || v[i] == 'z')) {
            offsetSeconds = 0;
        } else if (i + 6 == end && (v[i] == '+' || v[i] == '-') && sep(v, i + 3, ':')) {
            int oh = digits(v, i + 1, 2);
            int om = digits(v, i + 4, 2);
            if (oh < 0 || oh > 23 || om < 0 || om > 59) {
                return Long.MIN_VALUE;
            }
            offsetSeconds = (oh * 3600L + om * 60L) * (v[i] == '-' ? -1 : 1);
        } else {
            return Long.MIN_VALUE;
        }
        long days;
        try {
            days = LocalDate.of(year, month, day).toEpochDay();
        } catch (DateTimeException e) {   // 31 November, 29 February of a common year
            return Long.MIN_VALUE;
        }
        return days * 86_400L + hour * 3600L + minute * 60L + second - offsetSeconds;
    }

    private static boolean sep(byte[] v, int i, char c) {
        return i < v.length && v[i] == c;
    }

    /** The non-negative number of {@code n} ASCII digits at {@code i}, or -1. */
    private static int digits(byte[] v, int i, int n) {
        if (i < 0 || i + n > v.length) {
            return -1;
        }
        int out = 0;
        for (int j = i; j < i + n; j++) {
            if (v[j] < '0' || v[j] > '9') {
                return -1;
            }
            out = out * 10 + (v[j] - '0');
        }
        return out;
    }
}
