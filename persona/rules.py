"""From validated settings to the plain rule values the per-event core takes (Flink pickles them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from operators.co_occurrence import RecommendRules
from operators.config_files import ConfigError
from operators.consent import ConsentPolicy
from operators.input_limits import InputLimits
from operators.model_scoring import ModelRules
from operators.pattern_spec import PatternBook, compile_patterns, load_patterns
from operators.personalize import Personalizer
from operators.profile_fold import ProfileRules
from operators.rule_sets import book_of, next_rule_set, parse_source
from persona.settings import JobSettings, resolve_path
from state.rule_registry import all_rule_sets, current_rule_set, publish
from state.rule_set_record import RuleSet


def model_rules(settings: JobSettings) -> ModelRules:
    m = settings.models
    return ModelRules(label_window_ms=m.label_window_ms, max_pending=m.max_pending_per_user,
                      bot_threshold=m.bot_threshold, bot_rule_events_per_min=m.bot_rule_events_per_min,
                      bot_rule_min_events=m.bot_rule_min_events, bot_min_events=m.bot_min_session_events,
                      score_every=m.score_every_events, label_timer_resolution_ms=m.label_timer_resolution_ms)


def profile_rules(settings: JobSettings) -> ProfileRules:
    p, lim = settings.profile, settings.limits
    return ProfileRules(session_gap_ms=p.session_gap_ms, recent_sessions=p.recent_sessions,
                        affinity_half_life_ms=p.affinity_half_life_ms, affinity_keep=p.affinity_keep,
                        loyal_min_purchases=p.loyal_min_purchases, allowed_lateness_ms=p.allowed_lateness_ms,
                        max_cart_items=lim.max_cart_items, demographic_attributes=frozenset(lim.demographic_attributes),
                        max_attribute_chars=lim.max_attribute_chars, max_pattern_marks=lim.max_pattern_marks, dedup_event_ids=settings.dedup.event_ids_per_user,
                        dedup_order_ids=settings.dedup.order_ids_per_user, consent=consent_policy(settings),
                        pii_fields=frozenset(settings.privacy.pii_fields),
                        pii_join_keys=frozenset(settings.privacy.pii_join_keys),
                        pii_salt=settings.privacy.pii_salt.get_secret_value())


def recommend_rules(settings: JobSettings) -> RecommendRules:
    """The settings' ``recommend`` section is the recommender's parameters, field by field."""
    return RecommendRules(**settings.recommend.model_dump(exclude={"enabled", "publish_ms", "fold_ms"}))


def consent_policy(settings: JobSettings) -> ConsentPolicy:
    c = settings.privacy.consent
    return ConsentPolicy(c.default.values(), {country: region.values() for region in c.regions.values()
                                              for country in region.countries})


def input_limits(settings: JobSettings) -> InputLimits:
    lim = settings.limits
    return InputLimits(max_record_bytes=lim.max_record_bytes, max_json_depth=lim.max_json_depth,
                       max_purchase_items=lim.max_purchase_items, max_event_age_ms=lim.max_event_age_ms,
                       max_event_future_ms=lim.max_event_future_ms, dead_letter_raw_bytes=lim.dead_letter_raw_bytes,
                       ip_geolocation=settings.privacy.ip_geolocation,
                       masked_fields=frozenset({"ip", *settings.privacy.pii_fields}))


def check_patterns(settings: JobSettings) -> PatternBook:
    """Compile the pattern file and check it against the lateness contract of absence patterns."""
    return check_book(load_patterns(resolve_path(settings.patterns_file)), settings.profile.allowed_lateness_ms,
                      settings.patterns_file)


def check_book(book: PatternBook, allowed_lateness_ms: int, source: str) -> PatternBook:
    """The start-up checks beyond compiling: an absence window must outlast the allowed lateness."""
    for spec in book.patterns:
        if spec.kind == "absence" and spec.within_ms <= allowed_lateness_ms:
            raise ConfigError(f"{source}: patterns.{spec.name}.within must exceed "
                              f"profile.allowed_lateness_ms ({allowed_lateness_ms} ms)")
    return book


def publish_rules(settings: JobSettings, source: str, origin: str, published_by: str, note: str = "",
                  rollback_of: int | None = None) -> RuleSet:
    """Check ``source`` as the job would at start-up, then store it as the next version and put it in force."""
    check_book(compile_patterns(parse_source(source, origin), origin), settings.profile.allowed_lateness_ms, origin)
    client = redis_client(settings)
    try:
        return publish(client, settings.redis.keys(),
                       lambda newest: next_rule_set(newest, source, published_by, int(time.time() * 1000), note,
                                                    rollback_of))
    finally:
        client.close()


def rule_set_in_force(settings: JobSettings) -> PatternBook:
    """The rule set the job starts with: the registry's, after publishing the pattern file if its text was never
    published (a deployment with a changed file is a publication; a restart keeps what was published at runtime)."""
    path = resolve_path(settings.patterns_file)
    source = read_text(path)
    check_patterns(settings)
    client = redis_client(settings)
    keys = settings.redis.keys()
    try:
        with redis_reachable(settings):
            known = {r.source for r in all_rule_sets(client, keys)}
            if source not in known or current_rule_set(client, keys) is None:
                publish(client, keys, lambda newest: next_rule_set(
                    newest, source, f"job start-up ({settings.patterns_file})", int(time.time() * 1000)))
            current = current_rule_set(client, keys)
    finally:
        client.close()
    assert current is not None
    return check_book(book_of(current), settings.profile.allowed_lateness_ms, f"rule set v{current.version}")


@contextmanager
def redis_reachable(settings: JobSettings) -> Iterator[None]:
    """A Redis error inside becomes the one-line ConfigError that names ``redis.url``."""
    try:
        yield
    except redis.RedisError as e:
        raise ConfigError(f"redis.url: {settings.redis.masked_url} did not answer ({e})") from None


def redis_client(settings: JobSettings) -> redis.Redis:
    return settings.redis.client(socket_timeout=10, socket_connect_timeout=10)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None


def personalizer(settings: JobSettings, book: PatternBook | None = None) -> Personalizer:
    """The per-event core configured by ``settings`` (``book``: the already checked patterns, if any)."""
    return Personalizer(profile_rules(settings), model_rules(settings), book or check_patterns(settings),
                        settings.models.segments, recommend_rules(settings) if settings.recommend.enabled else None,
                        settings.history.triggers_before_ms, bool(settings.history.dry_run_topic))
