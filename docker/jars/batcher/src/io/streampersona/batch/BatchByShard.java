package io.streampersona.batch;

import java.time.Instant;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.TaskInfo;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * The one Java operator of the project: turns records into one batch per shard, so that the Python function is
 * called once per batch instead of once per record (docs/performance.md: the batched crossing).
 *
 * <p>Input (after {@code keyBy(new ShardKey(shards))}): {@code Row(user_key STRING, Row(value BYTES, topic STRING,
 * partition INT, offset BIGINT, ts TIMESTAMP_LTZ, trusted BOOLEAN))}. Output: {@code Row(shard INT, batch BYTES)},
 * the batch a MessagePack array of {@code [user_key, value, topic, partition, offset, timestamp_ms, trusted]}.
 *
 * <p>A shard's batch is flushed when it holds {@code maxRecords} records, {@code maxMillis} after the first record
 * that any shard buffered, <b>before any watermark is forwarded</b> (so every event reaches Python before the
 * watermark that follows it, as record by record), in {@code prepareSnapshotPreBarrier} (so a checkpoint never
 * holds a buffered record: this operator has no state), and at the end of a bounded input.
 *
 * <p>With {@code wake}, it also sends an empty batch to every shard this subtask owns, once after it starts: the
 * Python function then visits each of its shards even if no record comes for one (an upgrade seeds each shard's
 * states and timers at its first visit, jobs/changelog_seed.py).
 */
public final class BatchByShard extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, BoundedOneInput, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;

    private int shards = 128;
    private int maxRecords = 500;
    private long maxMillis = 20;
    private boolean wake;
    private static final byte[] EMPTY_BATCH = {(byte) 0x90}; // MessagePack: an empty array

    private transient Map<Integer, Buffer> buffers;
    private transient boolean flushArmed;
    private transient boolean woken;

    private static final class Buffer {
        final MsgPack pack = new MsgPack();
        int count;
    }

    /** Called from Python (py4j): an empty batch to each owned shard once after start (see the class comment). */
    public BatchByShard wakeEveryShard(boolean wake) {
        this.wake = wake;
        return this;
    }

    /** Called from Python (py4j) after the no-argument constructor; returns this operator. */
    public BatchByShard configure(int shards, int maxRecords, long maxMillis) {
        if (shards < 1 || maxRecords < 1 || maxMillis < 1) {
            throw new IllegalArgumentException("shards, maxRecords and maxMillis must be positive");
        }
        this.shards = shards;
        this.maxRecords = maxRecords;
        this.maxMillis = maxMillis;
        return this;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffers = new HashMap<>();
        flushArmed = false;
    }

    private void wakeOnce() {
        if (!wake || woken) {
            return;
        }
        woken = true;
        TaskInfo task = getRuntimeContext().getTaskInfo();
        for (int shard = 0; shard < shards; shard++) {
            Row key = new Row(1);
            key.setField(0, shard);
            int owner = KeyGroupRangeAssignment.assignKeyToParallelOperator(
                    key, task.getMaxNumberOfParallelSubtasks(), task.getNumberOfParallelSubtasks());
            if (owner == task.getIndexOfThisSubtask()) {
                Row out = new Row(2);
                out.setField(0, shard);
                out.setField(1, EMPTY_BATCH);
                output.collect(new StreamRecord<>(out));
            }
        }
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        wakeOnce();
        Row in = element.getValue();
        String user = (String) in.getField(0);
        Row record = (Row) in.getField(1);
        int shard = ShardKey.shardOf(user, shards);
        Buffer b = buffers.computeIfAbsent(shard, s -> new Buffer());
        MsgPack p = b.pack;
        p.arrayHeader(7);
        p.str(user);
        p.bin((byte[]) record.getField(0));
        p.str((String) record.getField(1));
        Integer partition = (Integer) record.getField(2);
        if (partition == null) {
            p.nil();
        } else {
            p.integer(partition);
        }
        Long offset = (Long) record.getField(3);
        if (offset == null) {
            p.nil();
        } else {
            p.integer(offset);
        }
        Object ts = record.getField(4);
        if (ts instanceof Instant) {
            p.integer(((Instant) ts).toEpochMilli());
        } else if (ts instanceof Long) {
            p.integer((Long) ts);
        } else if (ts instanceof java.sql.Timestamp) {
            p.integer(((java.sql.Timestamp) ts).getTime());
        } else {
            p.nil();
        }
        p.bool(Boolean.TRUE.equals(record.getField(5)));
        b.count++;
        if (b.count >= maxRecords) {
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
        wakeOnce();
        flushArmed = false;
        flushAll();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        wakeOnce();
        flushAll(); // the events before a watermark reach Python before it
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flushAll(); // nothing buffered at a checkpoint: the operator has no state
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
