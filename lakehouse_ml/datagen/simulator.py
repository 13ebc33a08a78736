"""The Cymbal retail simulator: customers, products, order lines and web sessions, day by day.

Model of behaviour
==================

Customers
    ``customers`` base customers sign up between two years before ``start_date`` and the end of
    the window, in customer-id order, at a slowly growing daily rate (the last day has 1.5x the
    sign-ups of the first). Each gets latent traits at creation:

    * ``order_rate`` λ (orders per day while active): lognormal, σ(log)=0.8, mean 0.05,
      correlated (ρ=0.4) with engagement and scaled by the preferred channel (store regulars
      x1.35, web x0.95, app x0.85, marketplace x0.8);
    * ``engagement`` (lognormal σ=0.6, mean 1; referral sign-ups are more engaged, paid-search
      ones less): drives browsing sessions and pages viewed;
    * ``price_sensitivity`` s in (0, 1) (logistic of a normal, mean 0.46; correlated ρ=0.5 with
      engagement, since deal hunters browse a lot; higher for paid-search/social sign-ups and
      younger customers): drives the share of discounted lines (0.04 + 0.7 s), the depth of
      discounts and the tilt towards budget categories (grocery, beauty, books, toys);
    * ``preferred_channel`` (younger customers prefer the app, older ones the store): 70% of a
      customer's orders use it, the rest follow the global mix;
    * ``primary_category``: 45% of a customer's lines come from it.

    A customer is active from the sign-up day until a latent churn day, drawn in closed form
    from a piecewise-constant hazard (an Exp(1) draw inverted through the cumulative hazard;
    the pieces are split at the end of onboarding and at scenario starts). Before any scenario
    the daily hazard is ``0.005 * exp(...)`` with -0.5 per s.d. of engagement, -0.4 per s.d. of
    order rate, +0.8 in the first 60 days of tenure (onboarding churn), a channel term (store
    -1.5, app +0.8, marketplace +0.2) and -1.5 x (s - 0.5): while prices are stable, deal
    seekers and store regulars are the loyal ones. About a third of customers leave within their
    first month; the median lifetime is two months, the mean over a year. At default settings
    about 35% of the customers who ordered in the last 90 days place no order in the next 30.

Orders (one row per line)
    An active customer places Poisson(λ x weekday factor) orders a day; an order has 1-5 lines
    (mean 2.2), each line a quantity of 1-3 (grocery and beauty more often >1). Products come
    from the line's category, weighted by a lognormal popularity among the products launched by
    then (10% launch inside the window). Discounts are 5%-60% (deeper for sensitive customers).
    ``unit_price`` = list price x regional price level x any price shock x (1 - discount),
    rounded to cents. ``order_ts`` is tz-naive UTC in microseconds with a channel-specific
    time-of-day profile (stores open 08:00-22:00); ``device`` is 'pos' exactly when ``channel``
    is 'store'.

Web sessions
    Each web or app order comes with a converted session on its device shortly before it.
    Active customers also browse: Poisson(1.5 x λ x engagement) sessions a day (x1.6 for store
    regulars, who research online and buy offline); those are ``converted`` when the customer
    ordered that day. Anonymous visitors add about 35% of the browsing sessions, with a NULL
    ``customer_id``. Traffic source depends on e-mail opt-in. All in all about four sessions
    per order.

Drift scenarios (see :data:`~lakehouse_ml.datagen.scenarios.SCENARIOS`), from their start day, I = intensity
    * ``price_shock``: paid prices x (1 + 0.15 I); order rates x exp(-3 I max(s - 0.3, 0));
      churn log-hazard + I (7 (s - 0.5) + 0.15). Price sensitivity flips from protective to the
      main driver of churn, and the engaged deal hunters a stale model trusts most leave.
    * ``channel_shift``: each store order moves to the app with probability 1 - exp(-0.7 I);
      order rates x exp(min(I, 2) x (store -1.5, app +0.8)); churn log-hazard
      + I x (store +3.5, web +0.2, app -1.5). The frequent, loyal store regulars now leave and
      the app users stay.
    * ``new_region``: round(0.3 I x customers) extra customers in region 'central' (ids after
      the base customers) sign up from the start day (truncated exponential, mean 12 days):
      app-first and price sensitive (mean s 0.67). A 30-day launch promotion multiplies their
      order rate by 1 + 3 s, their browsing by 1 + 6 s and adds 0.3 to their discount
      probability; after it their order rate is x max(1.7 - 1.8 s, 0.05) and their log-hazard
      gains -0.5 + 6 (s - 0.5): the busiest, most engaged newcomers churn the most.

Determinism and scale
=====================

All randomness comes from ``numpy.random.default_rng([seed, STREAM, index])`` streams: latent
customer traits in fixed blocks of 65,536 customers, and one stream per (table, day) for the
daily tables. Day ``D``'s rows therefore depend only on the seed, the config and ``D`` (plus the
latent arrays, 31 bytes per customer), so days can be generated in any order, independently, in
flat memory. The draws do not depend on the scenarios' presence: before a scenario starts, a run
with it produces exactly the rows of a run without it.

Identifiers: ``customer_id`` 1..N for base customers, N+1..N+M for 'central' ones;
``product_id`` 1..P; ``order_id`` and ``session_id`` are ``YYYYMMDD * 10**8 + k`` with k the
1-based rank of the order (session) by time within its day, so they are globally unique and
readable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from lakehouse_ml.datagen.config import MIN_CUSTOMERS, SimulationConfig
from lakehouse_ml.datagen.schema import (
    ACQUISITION_CHANNELS,
    ARROW_SCHEMAS,
    CATEGORIES,
    CHANNELS,
    DEVICES,
    REGIONS,
    TRAFFIC_SOURCES,
    arrow_to_pandas,
)

# Random streams: numpy.random.default_rng([seed, STREAM, index]).
STREAM_CUSTOMERS = 1
STREAM_CENTRAL = 2
STREAM_PRODUCTS = 3
STREAM_ORDER_COUNTS = 4
STREAM_ORDERS = 5
STREAM_SESSIONS = 6

LATENT_BLOCK = 65_536
ID_DAY_FACTOR = 10**8  # order_id / session_id = YYYYMMDD * ID_DAY_FACTOR + rank within the day

HISTORY_DAYS = 730
SIGNUP_GROWTH = 1.5
ONBOARD_DAYS = 60

MEAN_ORDER_RATE = 0.05
ORDER_RATE_SIGMA = 0.8
ENGAGEMENT_SIGMA = 0.6
RATE_ENGAGEMENT_CORR = 0.4
# Price sensitivity: logistic of a normal, correlated with engagement (deal hunters browse a lot).
SENSITIVITY_LOGIT = -0.3
SENSITIVITY_LOGIT_CENTRAL = 0.8
SENSITIVITY_SCALE = 1.0
SENSITIVITY_ENGAGEMENT_CORR = 0.5
SENSITIVITY_AGE = 0.015  # per year of birth: younger customers are more price sensitive
LINES_P = np.array([0.38, 0.26, 0.18, 0.11, 0.07])
MEAN_LINES = float((np.arange(1, 6) * LINES_P).sum())
WEEKDAY_FACTOR = np.array([0.95, 0.9, 0.95, 1.0, 1.1, 1.15, 0.95])  # Monday..Sunday
WEEKDAY_FACTOR = WEEKDAY_FACTOR / WEEKDAY_FACTOR.mean()

# Regions (north, south, east, west, central) and their price levels.
REGION_P = np.array([0.28, 0.24, 0.26, 0.22])
REGION_PRICE = np.array([1.0, 0.96, 1.02, 1.04, 0.94])
# Acquisition channels (organic, paid_search, social, referral, email).
ACQ_P = np.array([0.35, 0.25, 0.15, 0.12, 0.13])
ACQ_P_CENTRAL = np.array([0.15, 0.40, 0.30, 0.10, 0.05])
ACQ_ENGAGEMENT = np.array([0.0, -0.2, -0.05, 0.3, 0.15])
ACQ_SENSITIVITY = np.array([0.0, 0.3, 0.3, -0.1, 0.1])  # on the logit scale

# Channels (web, app, store, marketplace).
CHANNEL_MIX = np.array([0.38, 0.27, 0.22, 0.13])
P_PREFERRED_CHANNEL = 0.7
PREF_CHANNEL_BY_AGE = np.array(
    [
        [0.30, 0.42, 0.13, 0.15],  # born after 1992
        [0.38, 0.25, 0.27, 0.10],  # 1970-1992
        [0.36, 0.10, 0.46, 0.08],  # before 1970
    ]
)
PREF_CHANNEL_CENTRAL = np.array([0.20, 0.50, 0.05, 0.25])
# Order rate by preferred channel: store regulars shop often, app users less (before any scenario).
PREF_CHANNEL_RATE = np.array([0.95, 0.85, 1.35, 0.8])
DEVICE_BY_CHANNEL = np.array(  # desktop, mobile, tablet, pos
    [
        [0.62, 0.28, 0.10, 0.0],
        [0.0, 0.86, 0.14, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.42, 0.50, 0.08, 0.0],
    ]
)
HOUR_PROFILE = np.array(
    [
        # online: night lull, evening peak
        [
            1,
            0.6,
            0.4,
            0.3,
            0.3,
            0.4,
            0.8,
            1.5,
            2.2,
            2.8,
            3,
            3.2,
            3.5,
            3.3,
            3.1,
            3,
            3.2,
            3.6,
            4.2,
            4.8,
            5,
            4.5,
            3.2,
            1.8,
        ],
        # stores: open 08:00-22:00
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 2.5, 4, 5, 5.5, 5.2, 5, 5, 5.5, 6, 5.5, 4, 2.5, 1, 0, 0],
    ],
    dtype=float,
)

# Categories (electronics, apparel, home, beauty, grocery, toys, sports, books).
CATEGORY_PRODUCT_SHARE = np.array([0.14, 0.18, 0.14, 0.12, 0.14, 0.09, 0.10, 0.09])
CATEGORY_POPULARITY = np.array([0.10, 0.16, 0.12, 0.13, 0.20, 0.08, 0.09, 0.12])
CATEGORY_BUDGET = np.array([-1.0, 0.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0])  # +1 budget, -1 premium
CATEGORY_TILT = 2.0
CATEGORY_MEDIAN_PRICE = np.array([250.0, 45.0, 60.0, 25.0, 8.0, 30.0, 55.0, 18.0])
CATEGORY_MULTI_QTY = np.array([0.05, 0.15, 0.12, 0.3, 0.4, 0.15, 0.12, 0.1])
P_PRIMARY_CATEGORY = 0.45
SENSITIVITY_BINS = 20
BRANDS = {
    "electronics": ("Aurora Labs", "Voltra", "Pixelon", "Cymbal Electronics", "Kinetix", "Bytewise"),
    "apparel": ("Maison Lark", "Norththread", "Urban Fern", "Cymbal Apparel", "Trailmark", "Basico"),
    "home": ("Hearthstone", "Casa Verde", "Nordhem", "Cymbal Home", "Dwellwell", "Simplicity"),
    "beauty": ("Lumiere", "Glowly", "Petal & Co", "Cymbal Beauty", "Purely", "Everyday Care"),
    "grocery": ("Harvest Table", "Green Basket", "Farmstead", "Cymbal Pantry", "Daily Fresh", "ValuMart"),
    "toys": ("Wonderbox", "Brickly", "Tinker Town", "Cymbal Kids", "PlayPal", "FunFair"),
    "sports": ("Summit Pro", "Stride", "Peakform", "Cymbal Sport", "Courtside", "Active Basics"),
    "books": ("Folio House", "Inkwell Press", "Paperleaf", "Cymbal Books", "Chapter One", "Pocket Reads"),
}
BRAND_P = np.array([0.12, 0.13, 0.2, 0.25, 0.15, 0.15])
BRAND_PRICE_TIER = np.array([1.8, 1.5, 1.0, 1.0, 0.7, 0.6])
P_LAUNCH_IN_WINDOW = 0.1

# Discounts.
DISCOUNT_P_BASE = 0.04
DISCOUNT_P_SENSITIVITY = 0.7
DISCOUNT_P_CENTRAL_PROMO = 0.3
MAX_DISCOUNT = 0.6

# Churn hazard (per day) before any scenario.
HAZARD_BASE = 0.005
HAZARD_ENGAGEMENT = -0.5
HAZARD_ORDER_RATE = -0.4
HAZARD_ONBOARDING = 0.8
HAZARD_CHANNEL = np.array([0.0, 0.8, -1.5, 0.2])
HAZARD_SENSITIVITY = -1.5

# Scenarios.
PRICE_SHOCK_PRICE = 0.15
PRICE_SHOCK_RATE = -3.0
PRICE_SHOCK_RATE_FROM = 0.3
PRICE_SHOCK_HAZARD_SENSITIVITY = 7.0
PRICE_SHOCK_HAZARD = 0.15
CHANNEL_SHIFT_MOVE = 0.7
CHANNEL_SHIFT_HAZARD = np.array([0.2, -1.5, 3.5, 0.0])
CHANNEL_SHIFT_RATE = np.array([0.0, 0.8, -1.5, 0.0])
RATE_INTENSITY_CAP = 2.0  # order-rate effects saturate: an app customer orders at most ~5x as often
NEW_REGION_SHARE = 0.3
NEW_REGION_SIGNUP_MEAN_DAYS = 12.0
CENTRAL_HAZARD_BASE = 0.002
CENTRAL_PROMO_DAYS = 30  # the launch promotion runs for this many days from the scenario start
CENTRAL_PROMO_BOOST = 3.0  # order rate x (1 + boost x s) during the promotion
CENTRAL_PROMO_BROWSE = 6.0  # browsing x (1 + 6 s) during the promotion: deal hunters check the site daily
CENTRAL_AFTER_PROMO_RATE = (1.7, 1.8)  # order rate x (1.7 - 1.8 s) after it (floored at 0.05)
CENTRAL_AFTER_PROMO_HAZARD = -0.5  # log hazard + (-0.5 + 6 (s - 0.5)) after it
CENTRAL_AFTER_PROMO_HAZARD_SENSITIVITY = 6.0

# Web sessions.
BROWSE_FACTOR = 1.5
BROWSE_CHANNEL = np.array([1.0, 1.0, 1.6, 0.8])  # store shoppers research online, buy offline
ANONYMOUS_SHARE = 0.35
SESSION_DEVICE = np.array(  # desktop, mobile, tablet
    [
        [0.10, 0.80, 0.10],  # registered, prefers the app
        [0.45, 0.45, 0.10],  # registered, other
        [0.40, 0.52, 0.08],  # anonymous
    ]
)
SESSION_SOURCE = np.array(  # organic, paid_search, email, social, direct
    [
        [0.25, 0.12, 0.28, 0.12, 0.23],  # e-mail opt-in
        [0.32, 0.16, 0.03, 0.17, 0.32],  # no opt-in
        [0.38, 0.27, 0.02, 0.20, 0.13],  # anonymous
    ]
)
SECONDS_PER_PAGE = 22.0
P_BOUNCE_ZERO = 0.4

_BRAND_VOCABULARY = tuple(brand for category in CATEGORIES for brand in BRANDS[category])
_EPOCH = dt.date(1970, 1, 1)
_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000


def _cum(probabilities: np.ndarray) -> np.ndarray:
    """Row-wise cumulative probabilities, normalized, with the last column exactly 1."""
    p = np.asarray(probabilities, dtype=float)
    c = np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)
    c[..., -1] = 1.0
    return c


def _choose(u: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Categorical draws from uniforms ``u`` and one cumulative distribution ``cum``."""
    return np.minimum(np.searchsorted(cum, u, side="right"), cum.size - 1)


def _choose_by_group(u: np.ndarray, group: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Categorical draws where row ``group[i]`` of ``cum`` (G x K) is draw i's distribution."""
    g, k = cum.shape
    flat = (cum + np.arange(g)[:, None]).ravel()
    group = group.astype(np.int64)
    idx = np.searchsorted(flat, group + u, side="right") - group * k
    return np.clip(idx, 0, k - 1)


def _strings(codes: np.ndarray, vocabulary) -> pa.Array:
    return pa.array(list(vocabulary), pa.string()).take(pa.array(codes.astype(np.int32, copy=False)))


class CymbalSimulator:
    """Generates the Cymbal retail tables for one :class:`SimulationConfig`.

    Construction draws the customers' latent state (all customers, in fixed blocks) and the
    product catalogue; every ``*_for_day`` call is then independent of the others.
    """

    def __init__(self, config: SimulationConfig):
        if not isinstance(config, SimulationConfig):
            raise TypeError(f"config must be a SimulationConfig, got {type(config).__name__}")
        self.config = config
        self._seed = config.seed
        self._epoch0 = (config.start_date - _EPOCH).days  # start_date as days since 1970-01-01
        self._weekday0 = config.start_date.weekday()
        self._scenario_days = {
            s.name: ((s.start - config.start_date).days, s.intensity) for s in config.scenarios
        }
        self._build_products()
        self._build_customers()
        self._core_cache: tuple[int, dict] | None = None

    # ----------------------------------------------------------------------------- public API
    @property
    def n_customers(self) -> int:
        """All customers, including the 'central' ones of the new_region scenario."""
        return int(self._signup.size)

    def day_index(self, day: dt.date) -> int:
        """``day`` as 0-based index into the window; ValueError outside it."""
        if isinstance(day, dt.datetime):
            day = day.date()
        if not isinstance(day, dt.date):
            raise ValueError(f"day must be a date, got {type(day).__name__}")
        d = (day - self.config.start_date).days
        if not 0 <= d < self.config.days:
            raise ValueError(
                f"{day.isoformat()} is outside the simulated window "
                f"{self.config.start_date.isoformat()}..{self.config.end_date.isoformat()}"
            )
        return d

    def customers(self, chunk_size: int = 250_000) -> Iterator[pd.DataFrame]:
        """All customers, ordered by customer_id, in DataFrames of at most ``chunk_size`` rows."""
        for table in self.customer_tables(chunk_size):
            yield arrow_to_pandas(table, "customers")

    def products(self) -> pd.DataFrame:
        return arrow_to_pandas(self.products_table(), "products")

    def orders_for_day(self, day: dt.date) -> pd.DataFrame:
        """The order lines of ``day``, ordered by order_id and line_number."""
        return arrow_to_pandas(self.orders_table(day), "orders")

    def sessions_for_day(self, day: dt.date) -> pd.DataFrame:
        """The web sessions of ``day``, ordered by session_id."""
        return arrow_to_pandas(self.sessions_table(day), "web_sessions")

    # Arrow versions (what write_landing writes; the DataFrames above are views of these).
    def customer_tables(self, chunk_size: int = 250_000) -> Iterator[pa.Table]:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        n = self.n_customers
        for lo in range(0, n, chunk_size):
            yield self._customers_slice(lo, min(n, lo + chunk_size))

    def products_table(self) -> pa.Table:
        p = self._prod_category.size
        return pa.table(
            {
                "product_id": np.arange(1, p + 1, dtype=np.int64),
                "category": _strings(self._prod_category, CATEGORIES),
                "brand": _strings(self._prod_brand, _BRAND_VOCABULARY),
                "list_price": self._list_price,
                "launch_date": pa.array((self._epoch0 + self._launch).astype(np.int32), pa.date32()),
            },
            schema=ARROW_SCHEMAS["products"],
        )

    def orders_table(self, day: dt.date) -> pa.Table:
        core = self._orders_core(self.day_index(day))
        return core["lines_table"]

    def sessions_table(self, day: dt.date) -> pa.Table:
        return self._sessions(self.day_index(day))

    def expected_order_lines(self) -> float:
        """The expected number of order lines over the whole window (exact, given the latents)."""
        total = 0.0
        for d in range(self.config.days):
            active = self._active(d)
            total += float(self._order_rate(d, active).sum())
        return total * MEAN_LINES

    def latent_frame(self) -> pd.DataFrame:
        """The customers' hidden state (ground truth for analysis; not part of the landing zone)."""
        start = np.datetime64(self.config.start_date, "D")
        return pd.DataFrame(
            {
                "customer_id": np.arange(1, self.n_customers + 1, dtype=np.int64),
                "signup_date": start + self._signup.astype("timedelta64[D]"),
                "churn_date": start + np.minimum(self._churn, 10**6).astype("timedelta64[D]"),
                "order_rate": self._lam,
                "engagement": self._eng,
                "price_sensitivity": self._sens,
                "preferred_channel": np.array(CHANNELS, dtype=object)[self._pref],
                "primary_category": np.array(CATEGORIES, dtype=object)[self._primary],
                "region": np.array(REGIONS, dtype=object)[self._region],
            }
        )

    # ------------------------------------------------------------------------------- products
    def _build_products(self) -> None:
        cfg = self.config
        rng = np.random.default_rng([self._seed, STREAM_PRODUCTS])
        p = cfg.products
        n_cat = len(CATEGORIES)
        category = np.concatenate(
            [np.arange(n_cat), _choose(rng.random(p - n_cat), _cum(CATEGORY_PRODUCT_SHARE))]
        )
        anchor = np.arange(p) < n_cat  # one product per category always on sale
        perm = rng.permutation(p)
        category, anchor = category[perm].astype(np.int8), anchor[perm]
        brand = _choose(rng.random(p), _cum(BRAND_P))
        z = rng.standard_normal(p)
        list_price = CATEGORY_MEDIAN_PRICE[category] * BRAND_PRICE_TIER[brand] * np.exp(0.45 * z)
        list_price = np.maximum(np.round(list_price, 2), 0.99)
        in_window = (rng.random(p) < P_LAUNCH_IN_WINDOW) & ~anchor
        launch_before = -rng.integers(30, 3 * 365, size=p)
        launch_inside = rng.integers(0, cfg.days, size=p)
        popularity = np.exp(rng.standard_normal(p))
        self._prod_category = category
        self._prod_brand = (category.astype(np.int64) * len(BRAND_P) + brand).astype(np.int32)
        self._list_price = list_price.astype(np.float64)
        self._launch = np.where(in_window, launch_inside, launch_before).astype(np.int32)
        self._popularity = popularity
        # Products grouped by category, for drawing a product within a category.
        self._prod_by_cat = np.argsort(category, kind="stable")
        counts = np.bincount(category, minlength=n_cat)
        self._cat_offsets = np.concatenate([[0], np.cumsum(counts)])

    def _product_sampler(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-category cumulative weights of the products on sale on day ``d``."""
        order = self._prod_by_cat
        weight = self._popularity[order] * (self._launch[order] <= d)
        flat = np.empty(order.size)
        last = np.empty(len(CATEGORIES), dtype=np.int64)
        for c in range(len(CATEGORIES)):
            lo, hi = self._cat_offsets[c], self._cat_offsets[c + 1]
            w = weight[lo:hi]
            cum = np.cumsum(w) / w.sum()
            flat[lo:hi] = c + cum
            last[c] = lo + np.flatnonzero(w)[-1]
        return flat, last

    # ------------------------------------------------------------------------------ customers
    def _build_customers(self) -> None:
        cfg = self.config
        n_base = cfg.customers
        new_region = self._scenario_days.get("new_region")
        n_central = round(NEW_REGION_SHARE * new_region[1] * n_base) if new_region else 0
        total = n_base + n_central
        self._signup = np.empty(total, np.int32)
        self._churn = np.empty(total, np.int32)
        self._region = np.empty(total, np.int8)
        self._acq = np.empty(total, np.int8)
        self._birth = np.empty(total, np.int16)
        self._optin = np.empty(total, bool)
        self._lam = np.empty(total, np.float64)
        self._eng = np.empty(total, np.float32)
        self._sens = np.empty(total, np.float32)
        self._pref = np.empty(total, np.int8)
        self._primary = np.empty(total, np.int8)
        for block, lo in enumerate(range(0, n_base, LATENT_BLOCK)):
            hi = min(n_base, lo + LATENT_BLOCK)
            self._customer_block(block, lo, hi, n_base, central=False)
        for block, lo in enumerate(range(0, n_central, LATENT_BLOCK)):
            hi = min(n_central, lo + LATENT_BLOCK)
            self._customer_block(block, n_base + lo, n_base + hi, n_central, central=True)

    def _customer_block(self, block: int, lo: int, hi: int, n_group: int, central: bool) -> None:
        cfg = self.config
        rng = np.random.default_rng([self._seed, STREAM_CENTRAL if central else STREAM_CUSTOMERS, block])
        n = hi - lo
        u = rng.random((6, n))
        z = rng.standard_normal((4, n))
        exposure = rng.standard_exponential(n)

        # Sign-up day (0 = start_date), in id order.
        if central:
            first = self._scenario_days["new_region"][0]
            span = cfg.days - first
            mean = NEW_REGION_SIGNUP_MEAN_DAYS
            rank = np.arange(lo, hi) - cfg.customers
            q = (rank + u[0]) / n_group * (1 - np.exp(-span / mean))
            signup = first + np.floor(-mean * np.log1p(-q))
            signup = np.minimum(signup, cfg.days - 1)
        else:
            span = HISTORY_DAYS + cfg.days
            q = (np.arange(lo, hi) + u[0]) / n_group
            g = np.log(SIGNUP_GROWTH)
            signup = -HISTORY_DAYS + np.floor(span * np.log1p(q * (SIGNUP_GROWTH - 1)) / g)
            signup = np.minimum(signup, cfg.days - 1)
        signup = signup.astype(np.int32)

        region = np.full(n, 4, np.int8) if central else _choose(u[1], _cum(REGION_P)).astype(np.int8)
        acq = _choose(u[2], _cum(ACQ_P_CENTRAL if central else ACQ_P)).astype(np.int8)
        birth = np.clip(np.round((1992.0 if central else 1984.0) + 13.0 * z[2]), 1948, 2008).astype(np.int16)

        log_eng = ENGAGEMENT_SIGMA * z[0] - ENGAGEMENT_SIGMA**2 / 2 + ACQ_ENGAGEMENT[acq]
        z_rate = RATE_ENGAGEMENT_CORR * z[0] + np.sqrt(1 - RATE_ENGAGEMENT_CORR**2) * z[1]
        z_sens = SENSITIVITY_ENGAGEMENT_CORR * z[0] + np.sqrt(1 - SENSITIVITY_ENGAGEMENT_CORR**2) * z[3]
        logit = (SENSITIVITY_LOGIT_CENTRAL if central else SENSITIVITY_LOGIT) + SENSITIVITY_SCALE * z_sens
        logit = logit + ACQ_SENSITIVITY[acq] - SENSITIVITY_AGE * (birth - 1984)
        sens = 1.0 / (1.0 + np.exp(-logit))
        lam = MEAN_ORDER_RATE * np.exp(ORDER_RATE_SIGMA * z_rate - ORDER_RATE_SIGMA**2 / 2)
        age_group = np.where(birth > 1992, 0, np.where(birth >= 1970, 1, 2))
        if central:
            pref = _choose(u[3], _cum(PREF_CHANNEL_CENTRAL))
        else:
            pref = _choose_by_group(u[3], age_group, _cum(PREF_CHANNEL_BY_AGE))
        sbin = np.minimum((sens * SENSITIVITY_BINS).astype(np.int64), SENSITIVITY_BINS - 1)
        primary = _choose_by_group(u[4], sbin, self._category_cum())
        eng = np.exp(log_eng)
        lam = lam * PREF_CHANNEL_RATE[pref]
        optin = u[5] < 0.3 + 0.25 * (eng > 1.0)

        # Churn: invert the cumulative piecewise-constant hazard at an Exp(1) draw.
        z_eng = (log_eng + ENGAGEMENT_SIGMA**2 / 2) / ENGAGEMENT_SIGMA
        if central:
            base = np.full(n, np.log(CENTRAL_HAZARD_BASE))
        else:
            base = (
                np.log(HAZARD_BASE)
                + HAZARD_ENGAGEMENT * z_eng
                + HAZARD_ORDER_RATE * z_rate
                + HAZARD_CHANNEL[pref]
                + HAZARD_SENSITIVITY * (sens - 0.5)
            )
        churn = self._churn_day(signup, base, sens, pref, exposure, central)

        sl = slice(lo, hi)
        self._signup[sl] = signup
        self._churn[sl] = churn
        self._region[sl] = region
        self._acq[sl] = acq
        self._birth[sl] = birth
        self._optin[sl] = optin
        self._lam[sl] = lam
        self._eng[sl] = eng
        self._sens[sl] = sens
        self._pref[sl] = pref
        self._primary[sl] = primary

    def _category_cum(self) -> np.ndarray:
        """Category choice by price-sensitivity bin: sensitive customers tilt to budget categories."""
        mid = (np.arange(SENSITIVITY_BINS) + 0.5) / SENSITIVITY_BINS
        p = CATEGORY_POPULARITY[None, :] * np.exp(
            CATEGORY_TILT * (mid[:, None] - 0.5) * CATEGORY_BUDGET[None, :]
        )
        return _cum(p)

    def _log_hazard_shift(self, t: np.ndarray, signup, sens, pref, central: bool) -> np.ndarray:
        """What the calendar (scenarios) and tenure add to the log hazard at day ``t``."""
        shift = HAZARD_ONBOARDING * (t < signup + ONBOARD_DAYS)
        if "price_shock" in self._scenario_days:
            start, intensity = self._scenario_days["price_shock"]
            effect = intensity * (PRICE_SHOCK_HAZARD_SENSITIVITY * (sens - 0.5) + PRICE_SHOCK_HAZARD)
            shift = shift + (t >= start) * effect
        if "channel_shift" in self._scenario_days:
            start, intensity = self._scenario_days["channel_shift"]
            shift = shift + (t >= start) * intensity * CHANNEL_SHIFT_HAZARD[pref]
        if central:
            promo_end = self._scenario_days["new_region"][0] + CENTRAL_PROMO_DAYS
            effect = CENTRAL_AFTER_PROMO_HAZARD + CENTRAL_AFTER_PROMO_HAZARD_SENSITIVITY * (sens - 0.5)
            shift = shift + (t >= promo_end) * effect
        return shift

    def _churn_day(self, signup, base, sens, pref, exposure, central: bool) -> np.ndarray:
        """First inactive day; the hazard is constant between sign-up, onboarding end and scenario starts."""
        points = [signup, signup + ONBOARD_DAYS]
        for name in ("price_shock", "channel_shift"):
            if name in self._scenario_days:
                points.append(np.maximum(self._scenario_days[name][0], signup))
        if central:
            points.append(np.maximum(self._scenario_days["new_region"][0] + CENTRAL_PROMO_DAYS, signup))
        bounds = np.sort(np.stack(points, axis=1).astype(np.float64), axis=1)  # (n, K)
        shift = self._log_hazard_shift(bounds, signup[:, None], sens[:, None], pref[:, None], central)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            hazard = np.exp(base[:, None] + shift)
            cum = np.zeros_like(bounds)
            cum[:, 1:] = np.cumsum(hazard[:, :-1] * np.diff(bounds, axis=1), axis=1)
            seg = (cum <= exposure[:, None]).sum(axis=1) - 1
            rows = np.arange(bounds.shape[0])
            churn_time = bounds[rows, seg] + (exposure - cum[rows, seg]) / hazard[rows, seg]
        churn_time = np.nan_to_num(churn_time, nan=2**30, posinf=2**30)
        return np.minimum(np.ceil(churn_time), 2**30).astype(np.int32)

    def _customers_slice(self, lo: int, hi: int) -> pa.Table:
        return pa.table(
            {
                "customer_id": np.arange(lo + 1, hi + 1, dtype=np.int64),
                "signup_date": pa.array((self._epoch0 + self._signup[lo:hi]).astype(np.int32), pa.date32()),
                "region": _strings(self._region[lo:hi], REGIONS),
                "acquisition_channel": _strings(self._acq[lo:hi], ACQUISITION_CHANNELS),
                "birth_year": self._birth[lo:hi].astype(np.int64),
                "email_opt_in": self._optin[lo:hi],
            },
            schema=ARROW_SCHEMAS["customers"],
        )

    # ---------------------------------------------------------------------------------- days
    def _active(self, d: int) -> np.ndarray:
        return np.flatnonzero((self._signup <= d) & (self._churn > d))

    def _order_rate(self, d: int, active: np.ndarray) -> np.ndarray:
        rate = self._lam[active] * WEEKDAY_FACTOR[(self._weekday0 + d) % 7]
        shock = self._scenario_days.get("price_shock")
        if shock and d >= shock[0]:
            over = np.maximum(self._sens[active] - PRICE_SHOCK_RATE_FROM, 0.0)
            rate = rate * np.exp(PRICE_SHOCK_RATE * shock[1] * over)
        shift = self._scenario_days.get("channel_shift")
        if shift and d >= shift[0]:
            rate = rate * np.exp(min(shift[1], RATE_INTENSITY_CAP) * CHANNEL_SHIFT_RATE[self._pref[active]])
        if "new_region" in self._scenario_days:
            central = self._region[active] == 4
            if central.any():
                s = self._sens[active[central]].astype(np.float64)
                if d < self._scenario_days["new_region"][0] + CENTRAL_PROMO_DAYS:
                    rate[central] *= 1.0 + CENTRAL_PROMO_BOOST * s
                else:
                    a, b = CENTRAL_AFTER_PROMO_RATE
                    rate[central] *= np.maximum(a - b * s, 0.05)
        return rate

    def _price_level(self, d: int) -> float:
        shock = self._scenario_days.get("price_shock")
        return 1.0 + PRICE_SHOCK_PRICE * shock[1] if shock and d >= shock[0] else 1.0

    def _day_id_base(self, d: int) -> int:
        day = self.config.start_date + dt.timedelta(days=d)
        return (day.year * 10_000 + day.month * 100 + day.day) * ID_DAY_FACTOR

    def _orders_core(self, d: int) -> dict:
        if self._core_cache is not None and self._core_cache[0] == d:
            return self._core_cache[1]
        active = self._active(d)
        counts = np.random.default_rng([self._seed, STREAM_ORDER_COUNTS, d]).poisson(
            self._order_rate(d, active)
        )
        buying = counts > 0
        buyers = active[buying]
        cust = np.repeat(buyers, counts[buying])
        n = cust.size
        if n >= ID_DAY_FACTOR:
            raise ValueError(f"more than {ID_DAY_FACTOR - 1} orders on one day: lower the scale")
        rng = np.random.default_rng([self._seed, STREAM_ORDERS, d])

        # Orders.
        u = rng.random((7, n))
        channel = np.where(
            u[0] < P_PREFERRED_CHANNEL, self._pref[cust], _choose(u[1], _cum(CHANNEL_MIX))
        ).astype(np.int8)
        shift = self._scenario_days.get("channel_shift")
        if shift and d >= shift[0]:
            move = (channel == 2) & (u[2] < 1.0 - np.exp(-CHANNEL_SHIFT_MOVE * shift[1]))
            channel[move] = 1
        device = _choose_by_group(u[3], channel, _cum(DEVICE_BY_CHANNEL)).astype(np.int8)
        hour = _choose_by_group(u[4], (channel == 2).astype(np.int64), _cum(HOUR_PROFILE))
        midnight = (self._epoch0 + d) * _US_PER_DAY
        ts = midnight + hour * _US_PER_HOUR + np.floor(u[5] * _US_PER_HOUR).astype(np.int64)
        lines = _choose(u[6], _cum(LINES_P)) + 1
        order = np.argsort(ts, kind="stable")
        cust, channel, device, ts, lines = cust[order], channel[order], device[order], ts[order], lines[order]
        order_id = self._day_id_base(d) + np.arange(1, n + 1, dtype=np.int64)

        # Lines.
        n_lines = int(lines.sum())
        of_line = np.repeat(np.arange(n), lines)
        first_line = np.cumsum(lines) - lines
        line_number = np.arange(n_lines, dtype=np.int64) - first_line[of_line] + 1
        lc = cust[of_line]
        ul = rng.random((4, n_lines))
        sens = self._sens[lc].astype(np.float64)
        sbin = np.minimum((sens * SENSITIVITY_BINS).astype(np.int64), SENSITIVITY_BINS - 1)
        category = np.where(
            ul[0] < P_PRIMARY_CATEGORY, self._primary[lc], _choose_by_group(ul[1], sbin, self._category_cum())
        )
        flat, last = self._product_sampler(d)
        pos = np.searchsorted(flat, category + ul[2], side="right")
        pos = np.clip(pos, self._cat_offsets[category], last[category])
        product = self._prod_by_cat[pos]
        quantity = 1 + rng.binomial(2, CATEGORY_MULTI_QTY[category])
        depth = 0.05 * (1 + rng.binomial(11, 0.08 + 0.4 * sens))
        region = self._region[lc]
        p_discount = DISCOUNT_P_BASE + DISCOUNT_P_SENSITIVITY * sens
        if (
            "new_region" in self._scenario_days
            and d < self._scenario_days["new_region"][0] + CENTRAL_PROMO_DAYS
        ):
            p_discount = p_discount + DISCOUNT_P_CENTRAL_PROMO * (region == 4)
        discount = np.where(ul[3] < np.minimum(p_discount, 0.95), np.minimum(depth, MAX_DISCOUNT), 0.0).round(
            2
        )
        price = self._list_price[product] * REGION_PRICE[region] * self._price_level(d) * (1.0 - discount)
        price = np.maximum(price.round(2), 0.01)

        lines_table = pa.table(
            {
                "order_id": order_id[of_line],
                "line_number": line_number,
                "customer_id": lc.astype(np.int64) + 1,
                "product_id": product.astype(np.int64) + 1,
                "order_ts": pa.array(ts[of_line].view("datetime64[us]"), pa.timestamp("us")),
                "order_date": pa.array(np.full(n_lines, self._epoch0 + d, np.int32), pa.date32()),
                "unit_price": price,
                "quantity": quantity.astype(np.int64),
                "discount": discount,
                "channel": _strings(channel[of_line], CHANNELS),
                "device": _strings(device[of_line], DEVICES),
                "region": _strings(region, REGIONS),
            },
            schema=ARROW_SCHEMAS["orders"],
        )
        core = {
            "active": active,
            "buyers": buyers,
            "cust": cust,
            "channel": channel,
            "device": device,
            "ts": ts,
            "lines_table": lines_table,
        }
        self._core_cache = (d, core)
        return core

    def _sessions(self, d: int) -> pa.Table:
        core = self._orders_core(d)
        active, buyers = core["active"], core["buyers"]
        rng = np.random.default_rng([self._seed, STREAM_SESSIONS, d])
        weekday = WEEKDAY_FACTOR[(self._weekday0 + d) % 7]
        browse_rate = (
            BROWSE_FACTOR
            * BROWSE_CHANNEL[self._pref[active]]
            * self._lam[active]
            * self._eng[active]
            * weekday
        )
        if (
            "new_region" in self._scenario_days
            and d < self._scenario_days["new_region"][0] + CENTRAL_PROMO_DAYS
        ):
            central = self._region[active] == 4
            browse_rate[central] *= 1.0 + CENTRAL_PROMO_BROWSE * self._sens[active[central]]
        n_browse = rng.poisson(browse_rate)
        n_anon = int(rng.poisson(ANONYMOUS_SHARE * browse_rate.sum()))

        online = np.flatnonzero(core["channel"] <= 1)  # web and app orders come with a session
        order_cust = core["cust"][online]
        browse_cust = np.repeat(active, n_browse)
        n_o, n_b = order_cust.size, browse_cust.size
        n = n_o + n_b + n_anon
        if n >= ID_DAY_FACTOR:
            raise ValueError(f"more than {ID_DAY_FACTOR - 1} sessions on one day: lower the scale")
        cust = np.concatenate([order_cust, browse_cust, np.zeros(n_anon, np.int64)])
        registered = np.arange(n) < n_o + n_b
        kind = np.concatenate([np.zeros(n_o, np.int8), np.ones(n_b, np.int8), np.full(n_anon, 2, np.int8)])

        u = rng.random((5, n))
        pos = np.searchsorted(buyers, browse_cust)
        bought = (
            (pos < buyers.size) & (buyers[np.minimum(pos, max(buyers.size - 1, 0))] == browse_cust)
            if buyers.size
            else np.zeros(n_b, bool)
        )
        converted = np.concatenate([np.ones(n_o, bool), bought, np.zeros(n_anon, bool)])

        device_group = np.where(registered, np.where(self._pref[cust] == 1, 0, 1), 2)
        device = _choose_by_group(u[0], device_group, _cum(SESSION_DEVICE))
        device[:n_o] = core["device"][online]
        source_group = np.where(registered, np.where(self._optin[cust], 0, 1), 2)
        source = _choose_by_group(u[1], source_group, _cum(SESSION_SOURCE))

        page_rate = np.where(registered, 1.5 + 1.5 * self._eng[cust], 1.2) + 4.0 * (kind == 0)
        pages = 1 + rng.poisson(page_rate)
        seconds = rng.gamma(2.0 * pages, SECONDS_PER_PAGE)
        duration = np.where((pages == 1) & (u[2] < P_BOUNCE_ZERO), 0, np.round(seconds)).astype(np.int64)

        midnight = (self._epoch0 + d) * _US_PER_DAY
        hour = _choose(u[3], _cum(HOUR_PROFILE[0]))
        start = midnight + hour * _US_PER_HOUR + np.floor(u[4] * _US_PER_HOUR).astype(np.int64)
        before_order = (
            core["ts"][online] - duration[:n_o] * 1_000_000 - np.floor(u[4][:n_o] * 120e6).astype(np.int64)
        )
        start[:n_o] = np.maximum(before_order, midnight)

        order = np.argsort(start, kind="stable")
        cust, registered, start = cust[order], registered[order], start[order]
        customer_id = pa.array(cust.astype(np.int64) + 1, pa.int64(), mask=~registered)
        return pa.table(
            {
                "session_id": self._day_id_base(d) + np.arange(1, n + 1, dtype=np.int64),
                "customer_id": customer_id,
                "session_start": pa.array(start.view("datetime64[us]"), pa.timestamp("us")),
                "session_date": pa.array(np.full(n, self._epoch0 + d, np.int32), pa.date32()),
                "device": _strings(device[order], DEVICES),
                "traffic_source": _strings(source[order], TRAFFIC_SOURCES),
                "pages_viewed": pages[order].astype(np.int64),
                "duration_seconds": duration[order],
                "converted": converted[order],
            },
            schema=ARROW_SCHEMAS["web_sessions"],
        )


def config_for_order_lines(order_lines: int, **kwargs) -> SimulationConfig:
    """A config whose expected number of order lines is about ``order_lines`` (within ±15%).

    ``kwargs`` are the other fields (seed, start_date, days, products, scenarios); the number
    of customers is solved for from the simulator's own expected order rates.
    """
    if "customers" in kwargs:
        raise ValueError("config_for_order_lines picks `customers` itself; do not pass it")
    if isinstance(order_lines, bool) or not isinstance(order_lines, int) or order_lines < 1:
        raise ValueError(f"order_lines must be a positive integer, got {order_lines!r}")
    pilot_customers = 20_000
    pilot = SimulationConfig(customers=pilot_customers, **kwargs)
    per_customer = CymbalSimulator(pilot).expected_order_lines() / pilot_customers
    if per_customer <= 0:
        raise ValueError("this configuration generates no orders; widen the window (days)")
    customers = max(MIN_CUSTOMERS, round(order_lines / per_customer))
    if customers > 200_000:
        return SimulationConfig(customers=customers, **kwargs)
    # Smaller populations: the sampled traits of N customers vary with N, so search on the
    # exact expectation of each candidate population and keep the closest one.
    best, best_error, tried = customers, float("inf"), set()
    for _ in range(8):
        tried.add(customers)
        expected = CymbalSimulator(SimulationConfig(customers=customers, **kwargs)).expected_order_lines()
        error = abs(expected / order_lines - 1)
        if error < best_error:
            best, best_error = customers, error
        if error < 0.02 or expected <= 0:
            break
        customers = max(MIN_CUSTOMERS, round(customers * order_lines / expected))
        step = 1
        while customers in tried:
            customers = max(MIN_CUSTOMERS, customers + step)
            step = -step - 1 if step > 0 else -step + 1
    customers = best
    return SimulationConfig(customers=customers, **kwargs)
