"""Model specs: one YAML per model under `models/`, validated strictly.

A spec names the target (which services count, over what horizon), the cohort, the as-of
schedule for training and testing, the estimator (parameters, the candidates tried on the
validation slice, monotone constraints), calibration, the baseline's features, team capacity,
the evaluation (bootstrap replicates, calibration bins), fairness groups with the gaps that get
flagged, and the small-number threshold. `timesplit` turns the schedule into plain lists of dates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wobble.core.calendar import is_monday, monday_on_or_before
from wobble.core.errors import ConfigError
from wobble.core.vocab import SERVICES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measure(_Strict):
    """One count a `rise` target watches: contacts (with `services`, default every non-crisis
    service, and `statuses`) or frontline tags (of `polarity`)."""

    source: Literal["contacts", "tags"]
    services: list[str] | None = None  # contacts: default every service but the crisis services
    statuses: list[Literal["attended", "did_not_attend", "cancelled"]] = Field(default_factory=lambda: ["attended"])
    polarity: Literal["concern", "strength"] = "concern"  # tags
    min_count: int = Field(default=2, ge=1)  # at least this many in the horizon
    prior_count: float = Field(default=0.5, gt=0)  # added to the usual count: nobody's usual rate is 0

    @field_validator("services")
    @classmethod
    def _services(cls, v: list[str] | None) -> list[str] | None:
        unknown = [s for s in v or [] if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s): {', '.join(unknown)}")
        return v


class Target(_Strict):
    """What the model predicts.

    crisis: at least one contact with `services` in [as_of, as_of + horizon).
    escalation: contacts with `services` in [as_of, as_of + horizon) reach `ratio` times the
    person's own rate over [as_of − prior_days, as_of), and at least `min_contacts` of them;
    e.g. horizon 90, prior 180, ratio 2: 3 contacts in the prior 180 days (1.5 per 90 days)
    need at least 3 × 2 × 90 / 180 = 3, and at least min_contacts = 4, in the next 90 days.
    rise: any of `measures` rises well above the person's own usual level: at least `min_count`
    in [as_of, as_of + horizon), and that many would happen by chance less often than
    `significance` at the usual rate (Poisson), the usual rate being the count over the days
    `usual_days` before the as-of date (91 to 365: the last 90 days cannot lift it) plus
    `prior_count`. e.g. horizon 90, 11 routine contacts in days 91–365 before: usual rate
    (11 + 0.5) × 90 / 275 = 3.8 in 90 days; 10 or more in the next 90 days have a chance under
    0.01 (P(X ≥ 10 | 3.8) = 0.006), 9 do not (0.016).
    """

    kind: Literal["crisis", "escalation", "rise"] = "crisis"
    services: list[str] = Field(default_factory=list)  # crisis and escalation
    statuses: list[Literal["attended", "did_not_attend", "cancelled"]] | None = None  # None: any
    horizon_days: int = Field(ge=7, le=730)
    min_contacts: int = Field(default=4, ge=1)  # escalation only
    prior_days: int = Field(default=180, ge=7, le=1095)  # escalation only
    ratio: float = Field(default=2.0, gt=1.0)  # escalation only
    measures: list[Measure] = Field(default_factory=list)  # rise only
    usual_days: tuple[int, int] = (91, 365)  # rise only: the usual rate's window, days before as_of
    significance: float = Field(default=0.01, gt=0, lt=0.5)  # rise only
    phrase: str | None = None  # how a list says the outcome ("a crisis"); default by kind

    @field_validator("services")
    @classmethod
    def _services(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s): {', '.join(unknown)}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> Target:
        if self.kind in ("crisis", "escalation") and not self.services:
            raise ValueError(f"a {self.kind} target names at least one service")
        if self.kind == "rise" and not self.measures:
            raise ValueError("a rise target names at least one measure")
        lo, hi = self.usual_days
        if not 0 < lo < hi:
            raise ValueError("usual_days must be [from, to] days before the as-of date, from < to")
        return self

    @property
    def history_days(self) -> int:
        """How many days before the as-of date the label reads (a usual level), 0 if none."""
        return {"crisis": 0, "escalation": self.prior_days, "rise": self.usual_days[1]}[self.kind]

    @property
    def outcome_phrase(self) -> str:
        """'a crisis': what the list says a person has a chance of."""
        return self.phrase or {"crisis": "a crisis", "escalation": "contacts at least doubling",
                               "rise": "a rise well above their usual"}[self.kind]


class Cohort(_Strict):
    """Who a model is for at an as-of date: registered, alive, not opted out, of these ages, and
    (optionally) with no crisis contact in the last `no_crisis_days` (people in crisis care go to a
    list's other part) and registered at least `min_registered_days` (their usual level is known)."""

    min_age: int = 18
    max_age: int = 120
    no_crisis_days: int | None = Field(default=None, ge=1, le=365)
    min_registered_days: int | None = Field(default=None, ge=1, le=3650)


class ListSettings(_Strict):
    """What a team's list from this model is, and what it asks of each person on it."""

    title: str = "Highest risk"  # the heading of the part limited by the team's capacity
    # list a person only with at least one reason about change that raises concern and reads as a rise
    require_change_reason: bool = False
    # The list's other part, "Recently in crisis — check a plan exists", outside the capacity: people
    # with a crisis contact in the last `recent_crisis_days` (0: no such part), kept on later lists
    # for up to `follow_up_days` after it until the huddle records an outcome for them.
    recent_crisis_days: int = Field(default=7, ge=0, le=90)
    follow_up_days: int = Field(default=30, ge=0, le=180)


class Schedule(_Strict):
    # The earliest training as-of, a Monday. Absent: the first Monday with enough history before it
    # (`timesplit`): a site's data never span the demo's dates, and a fixed date either asks for
    # history the data do not have or, as years pass, lets training reach ever further back.
    train_start: date | None = None
    train_weeks: int | None = Field(default=None, ge=0)  # training as-ofs span at most this many weeks
    train_every_weeks: int = Field(default=4, ge=1)
    test_weeks: int = Field(default=12, ge=1)
    test_every_weeks: int = Field(default=2, ge=1)
    test_share_of_people: float = Field(default=0.3, gt=0, lt=1)
    # More test people than this add little precision and cost minutes of bootstrap: the rest train.
    max_test_people: int = Field(default=50_000, ge=100)
    max_train_dates: int | None = Field(default=None, ge=1)  # keep only the latest N training dates

    @field_validator("train_start")
    @classmethod
    def _monday(cls, v: date | None) -> date | None:
        if v is not None and not is_monday(v):
            raise ValueError(f"{v} is not a Monday")
        return v


class Estimator(_Strict):
    kind: Literal["lightgbm"] = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    # Alternatives to `params`, each a few overrides; every candidate is fitted with early
    # stopping and the one with the lowest log loss on the validation slice is kept.
    search: list[dict[str, Any]] = Field(default_factory=list)
    # The kept model fits at most max_rows rows, and candidates are compared on at most
    # search_rows, each a random share of training people: beyond that, more rows add little
    # (measured at 1M people) and cost minutes.
    max_rows: int = Field(default=1_000_000, ge=1000)
    search_rows: int = Field(default=300_000, ge=1000)
    # feature: +1 (risk never falls as it rises) or -1 (never rises); features not named are free
    monotone: dict[str, Literal[-1, 1]] = Field(default_factory=dict)
    early_stopping_rounds: int = Field(default=30, ge=1)
    validation_share: float = Field(default=0.2, gt=0, lt=0.5)

    @field_validator("params", "search")
    @classmethod
    def _reserved(cls, v):
        reserved = {"random_state", "seed", "deterministic", "force_row_wise", "n_jobs", "num_threads",
                    "monotone_constraints", "objective", "verbose"}
        for params in v if isinstance(v, list) else [v]:
            bad = sorted(reserved & set(params))
            if bad:
                raise ValueError(f"{', '.join(bad)} are set by wobble, not the spec")
        return v


class Evaluation(_Strict):
    bootstrap_replicates: int = Field(default=200, ge=20, le=5000)
    calibration_bins: int = Field(default=10, ge=3, le=50)


class FairnessTolerance(_Strict):
    """A subgroup is flagged when it differs from everyone by more than these."""

    auroc: float = Field(default=0.05, gt=0)  # absolute AUROC difference
    observed_to_expected: float = Field(default=0.2, gt=0)  # |O/E − 1|
    fnr_at_capacity: float = Field(default=0.1, gt=0)  # absolute difference
    fpr_at_capacity: float = Field(default=0.005, gt=0)  # absolute difference


class Baseline(_Strict):
    features: list[str]


class ModelSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    title: str
    description: str
    owner: str = "wobble data team"
    target: Target
    cohort: Cohort = Cohort()
    schedule: Schedule
    estimator: Estimator = Estimator()
    calibration: Literal["isotonic", "platt"] = "isotonic"
    baseline: Baseline
    features: list[str] | None = None  # default: every predictor in the catalogue
    capacity_per_team: int = Field(default=20, ge=1)
    listing: ListSettings = Field(default_factory=ListSettings, alias="list")  # `list:` in the YAML
    # a crisis model's spec to fit beside this one on the same training dates, so the card can show
    # this model's list against today's crisis-now ranking (early-warning models)
    compare_with: str | None = None
    evaluation: Evaluation = Evaluation()
    fairness_groups: list[Literal["age_band", "sex", "ethnicity_group", "imd_quintile"]] = Field(
        default_factory=lambda: ["age_band", "sex", "ethnicity_group", "imd_quintile"]
    )
    fairness_tolerance: FairnessTolerance = FairnessTolerance()
    small_number_threshold: int = Field(default=7, ge=1)
    intended_users: str = "multidisciplinary teams (MDTs) in neighbourhood health and care"


def load_spec(models_dir: Path, name: str) -> ModelSpec:
    """Read `models/<name>.yml`; errors name the file and key."""
    path = Path(models_dir) / f"{name}.yml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in Path(models_dir).glob("*.yml")))
        raise ConfigError(f"no model spec {path.name} in {models_dir} (known: {known})")
    try:
        spec = ModelSpec(**yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{path.name}: {where}: {msg}") from None
    except (yaml.YAMLError, TypeError) as exc:
        raise ConfigError(f"{path.name}: not a model spec ({exc})") from None
    if spec.name != name:
        raise ConfigError(f"{path.name}: name is {spec.name!r}; it must match the file name")
    return spec


@dataclass(frozen=True)
class TimeSplit:
    """Plain dates: training as-ofs, test as-ofs, and the gap that keeps outcomes apart."""

    train: list[date]
    test: list[date]
    last_label_date: date  # the last day any training label looks at
    data_end: date

    @property
    def gap_days(self) -> int:
        return (self.test[0] - self.last_label_date).days


def timesplit(schedule: Schedule, horizon_days: int, data_end: date, *, data_start: date | None = None,
              history_days: int = 365) -> TimeSplit:
    """Split as-of dates so that no training outcome overlaps the test period.

    e.g. data_end 2026-11-23, horizon 90: last matured as-of = Monday on/before 2026-08-25
    = 2026-08-24; test = every 2 weeks over 12 weeks back from it (2026-06-01 … 2026-08-24);
    last training as-of = Monday on/before 2026-06-01 − 90 days = 2026-03-02. Training as-ofs
    step back from there every `train_every_weeks`, over at most `train_weeks`, to the earliest
    allowed: `train_start`, and the first Monday with `history_days` of data before it (data from
    2023-11-27 and 365 days: 2024-12-02), since a snapshot or a label reaching before the data
    would read a quiet year as a person's usual.
    """
    horizon = timedelta(days=horizon_days)
    last_test = monday_on_or_before(data_end - horizon)
    n_test = schedule.test_weeks // schedule.test_every_weeks + 1
    test = sorted(last_test - timedelta(weeks=k * schedule.test_every_weeks) for k in range(n_test))
    last_train = monday_on_or_before(test[0] - horizon)
    bounds = {}
    if schedule.train_start:
        bounds[schedule.train_start] = f"train_start {schedule.train_start}"
    if data_start:
        first = monday_on_or_before(data_start + timedelta(days=history_days + 6))
        bounds[first] = f"{first}, the first Monday with {history_days} days of data before it (from {data_start})"
    if schedule.train_weeks is not None:
        bounds[last_train - timedelta(weeks=schedule.train_weeks)] = ""
    if not bounds:
        raise ConfigError("the schedule needs train_start or train_weeks when the data's start is not known")
    earliest = max(bounds)
    if last_train < earliest:
        raise ConfigError(
            f"not enough history: training would end {last_train}, before {bounds[earliest]}; "
            f"the data end at {data_end}"
        )
    train = []
    d = last_train
    while d >= earliest:
        train.append(d)
        d -= timedelta(weeks=schedule.train_every_weeks)
    train = sorted(train)
    if schedule.max_train_dates:
        train = train[-schedule.max_train_dates :]
    return TimeSplit(train, test, last_train + horizon - timedelta(days=1), data_end)
