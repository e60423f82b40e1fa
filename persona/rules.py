"""From validated settings to the plain rule values the per-event core takes (Flink pickles them)."""

from __future__ import annotations

from operators.config_files import ConfigError
from operators.consent import ConsentPolicy
from operators.input_limits import InputLimits
from operators.model_scoring import ModelRules
from operators.pattern_spec import PatternBook, load_patterns
from operators.personalize import Personalizer
from operators.profile_fold import ProfileRules
from persona.settings import JobSettings, resolve_path


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
    book = load_patterns(resolve_path(settings.patterns_file))
    for spec in book.patterns:
        if spec.kind == "absence" and spec.within_ms <= settings.profile.allowed_lateness_ms:
            raise ConfigError(f"{settings.patterns_file}: patterns.{spec.name}.within must exceed "
                              f"profile.allowed_lateness_ms ({settings.profile.allowed_lateness_ms} ms)")
    return book


def personalizer(settings: JobSettings, book: PatternBook | None = None) -> Personalizer:
    """The per-event core configured by ``settings`` (``book``: the already checked patterns, if any)."""
    return Personalizer(profile_rules(settings), model_rules(settings), book or check_patterns(settings),
                        settings.models.segments)
