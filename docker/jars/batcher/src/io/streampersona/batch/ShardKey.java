package io.streampersona.batch;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/**
 * Keys a record {@code Row(user_key STRING, ...)} by its shard: {@code Row(floorMod(user_key.hashCode(), shards))}.
 *
 * <p>The key is built exactly as PyFlink's {@code KeyByKeySelector} builds {@code Row(field 0)}, so the batches that
 * {@link BatchByShard} emits as {@code Row(shard, batch)} can be re-keyed with {@code KeyByKeySelector} through
 * {@code reinterpretAsKeyedStream}, without a second shuffle. Python computes the same shard with Java's
 * {@code String.hashCode} (operators/shards.py).
 */
public final class ShardKey implements KeySelector<Row, Row> {
    private static final long serialVersionUID = 1L;
    private int shards = 128;

    /** Called from Python (py4j) after the no-argument constructor; returns this selector. */
    public ShardKey configure(int shards) {
        if (shards < 1) {
            throw new IllegalArgumentException("shards must be positive");
        }
        this.shards = shards;
        return this;
    }

    public static int shardOf(String user, int shards) {
        return Math.floorMod(user == null ? 0 : user.hashCode(), shards);
    }

    @Override
    public Row getKey(Row record) {
        Row key = new Row(1);
        key.setField(0, shardOf((String) record.getField(0), shards));
        return key;
    }
}
