package io.streampersona.batch;

import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * {@link BatchByShard}'s twin for records that are already small batches: joins the MessagePack arrays that arrive
 * for a shard into one array, so the Python function behind it is called once per shard and flush, not once per
 * upstream batch (the item operator: every batch of the user operator sends a few signals to each item shard).
 *
 * <p>Input, keyed by shard: {@code Row(shard INT, array BYTES)}, a MessagePack array. Output: {@code Row(shard INT,
 * array BYTES)}, one array of the elements of the arrays joined, in arrival order. Flushed at {@code maxElements},
 * {@code maxMillis} after the first buffered array, in {@code prepareSnapshotPreBarrier} (no state: a checkpoint
 * never holds a buffered element), before the final watermark and at the end of input. Unlike {@link BatchByShard}
 * it lets other watermarks pass its buffer: the item fold does not depend on event-time order, and flushing at
 * every watermark made batches of a few signals.
 */
public final class ConcatByShard extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, BoundedOneInput, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;

    private int maxElements = 5000;
    private long maxMillis = 20;

    private transient Map<Integer, Buffer> buffers;
    private transient boolean flushArmed;

    private static final class Buffer {
        final MsgPack pack = new MsgPack();
        int count;
    }

    /** Called from Python (py4j) after the no-argument constructor; returns this operator. */
    public ConcatByShard configure(int maxElements, long maxMillis) {
        if (maxElements < 1 || maxMillis < 1) {
            throw new IllegalArgumentException("maxElements and maxMillis must be positive");
        }
        this.maxElements = maxElements;
        this.maxMillis = maxMillis;
        return this;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffers = new HashMap<>();
        flushArmed = false;
    }

    /** The element count and header length of a MessagePack array (fixarray, array 16, array 32). */
    static int[] arrayHeader(byte[] b) {
        int first = b[0] & 0xff;
        if ((first & 0xf0) == 0x90) {
            return new int[] {first & 0x0f, 1};
        }
        if (first == 0xdc) {
            return new int[] {((b[1] & 0xff) << 8) | (b[2] & 0xff), 3};
        }
        if (first == 0xdd) {
            return new int[] {((b[1] & 0xff) << 24) | ((b[2] & 0xff) << 16) | ((b[3] & 0xff) << 8) | (b[4] & 0xff), 5};
        }
        throw new IllegalArgumentException("not a MessagePack array: first byte " + first);
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row in = element.getValue();
        int shard = (Integer) in.getField(0);
        byte[] array = (byte[]) in.getField(1);
        int[] header = arrayHeader(array);
        if (header[0] == 0) {
            return;
        }
        Buffer b = buffers.computeIfAbsent(shard, s -> new Buffer());
        b.pack.append(array, header[1], array.length - header[1]);
        b.count += header[0];
        if (b.count >= maxElements) {
            flush(shard, b);
        } else if (!flushArmed) {
            flushArmed = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxMillis, this);
        }
    }

    private void flush(int shard, Buffer b) {
        if (b.count == 0) {
            return;
        }
        Row out = new Row(2);
        out.setField(0, shard);
        out.setField(1, b.pack.toArrayAfterHeader(b.count));
        b.pack.reset();
        b.count = 0;
        output.collect(new StreamRecord<>(out));
    }

    private void flushAll() {
        for (Map.Entry<Integer, Buffer> e : buffers.entrySet()) {
            flush(e.getKey(), e.getValue());
        }
    }

    @Override
    public void onProcessingTime(long time) {
        flushArmed = false;
        flushAll();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() == Long.MAX_VALUE) {
            flushAll(); // the end of a bounded input: everything reaches the item operator before its last timer
        }
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flushAll();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() {
        flushAll();
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        super.finish();
    }
}
