"""The static world of a simulation: catalog titles, users with devices and tastes, CDN edges.

Built once per seed from its own RNG, so the world does not change when the traffic
model does. Every identifier and address is synthetic: user and device ids are made up,
client IPs come from the private range 10.0.0.0/8.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from reelpulse.simulator.config import SimulationConfig

GENRES = (
    "drama",
    "comedy",
    "thriller",
    "action",
    "documentary",
    "sci-fi",
    "romance",
    "horror",
    "animation",
    "crime",
    "fantasy",
    "family",
)
COUNTRIES = (
    ("US", 30),
    ("GB", 8),
    ("DE", 8),
    ("BR", 8),
    ("IN", 8),
    ("FR", 6),
    ("MX", 5),
    ("CA", 5),
    ("JP", 5),
    ("ES", 4),
    ("IT", 4),
    ("AU", 3),
    ("NL", 3),
    ("SE", 2),
    ("PL", 1),
)
POPS = ("iad", "fra", "sjc", "lhr", "gru", "bom", "nrt", "ams", "mad", "mex", "syd", "sin")
COUNTRY_POPS = {
    "US": ("iad", "sjc"),
    "CA": ("iad", "sjc"),
    "MX": ("mex", "iad"),
    "BR": ("gru", "mex"),
    "GB": ("lhr", "ams"),
    "DE": ("fra", "ams"),
    "FR": ("fra", "lhr"),
    "ES": ("mad", "fra"),
    "IT": ("fra", "mad"),
    "NL": ("ams", "fra"),
    "SE": ("ams", "fra"),
    "PL": ("fra", "ams"),
    "IN": ("bom", "sin"),
    "JP": ("nrt", "sin"),
    "AU": ("syd", "sin"),
}
# device type: (share of devices, highest ladder rung it plays, operating systems)
DEVICE_TYPES = {
    "TV": (30, 5, ("Tizen 8.0", "webOS 24", "Android TV 14")),
    "MOBILE": (30, 3, ("iOS 18.2", "Android 15", "Android 14")),
    "WEB": (15, 4, ("Chrome 131", "Firefox 133", "Safari 18.2")),
    "TABLET": (10, 4, ("iPadOS 18.2", "Android 14")),
    "STREAMING_STICK": (10, 5, ("Fire OS 8", "Roku OS 13", "tvOS 18.2")),
    "CONSOLE": (5, 5, ("PlayStation 5 24.06", "Xbox OS 10.0")),
}
APP_VERSIONS = ("7.12.0", "7.13.1", "7.14.0")
LADDER = ((235, "P240"), (560, "P360"), (1050, "P480"), (2350, "P720"), (4300, "P1080"), (8000, "P2160"))
CODECS = ("h264", "h264", "hevc", "av1")
WORDS_A = (
    "Silent",
    "Crimson",
    "Midnight",
    "Broken",
    "Golden",
    "Hidden",
    "Last",
    "Wild",
    "Distant",
    "Burning",
    "Frozen",
    "Secret",
    "Electric",
    "Lonely",
    "Savage",
    "Quiet",
)
WORDS_B = (
    "Harbor",
    "Protocol",
    "Garden",
    "Empire",
    "Signal",
    "River",
    "Kingdom",
    "Witness",
    "Horizon",
    "Orchard",
    "Frontier",
    "Circuit",
    "Lantern",
    "Verdict",
    "Tide",
    "Summit",
)


@dataclass(frozen=True, slots=True)
class Title:
    index: int
    title_id: str
    name: str
    kind: str
    genres: tuple[int, ...]
    duration_ms: int
    release_year: int
    popularity: float
    ladder: tuple[tuple[int, str], ...]
    codec: str

    def record(self, event_time: int) -> dict[str, Any]:
        """The ``title`` event (schemas/title.avsc) of this title."""
        return {
            "title_id": self.title_id,
            "event_time": event_time,
            "name": self.name,
            "kind": self.kind,
            "genres": [GENRES[g] for g in self.genres],
            "duration_s": self.duration_ms // 1000,
            "release_year": self.release_year,
        }

    def ladder_record(self) -> list[dict[str, Any]]:
        return [{"bitrate_kbps": k, "resolution": r, "codec": self.codec} for k, r in self.ladder]


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    device_id: str
    device_type: str
    os: str
    app_version: str
    ip: str
    max_rung: int

    def record(self) -> dict[str, str]:
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "os": self.os,
            "app_version": self.app_version,
        }


@dataclass(frozen=True, slots=True)
class User:
    index: int
    user_id: str
    country: str
    profiles: tuple[str, ...]
    devices: tuple[Device, ...]
    taste: tuple[float, ...]
    taste_cum: tuple[float, ...]
    activity: float


@dataclass(frozen=True, slots=True)
class Edge:
    index: int
    edge_id: str
    pop: str
    base_health: float


@dataclass(frozen=True)
class World:
    titles: tuple[Title, ...]
    users: tuple[User, ...]
    edges: tuple[Edge, ...]
    user_cum: tuple[float, ...]
    title_cum: tuple[float, ...]
    genre_titles: tuple[tuple[Title, ...], ...]
    genre_cum: tuple[tuple[float, ...], ...]
    country_edges: dict[str, tuple[Edge, ...]]


def build_world(config: SimulationConfig) -> World:
    """The catalog, users and edges of ``config.world_seed`` (or ``config.seed``)."""
    seed = config.seed if config.world_seed is None else config.world_seed
    rng = random.Random(f"reelpulse-world-{seed}")
    titles = build_catalog(rng, config.titles)
    users = tuple(build_user(rng, i) for i in range(config.users))
    edges = tuple(build_edge(rng, i) for i in range(config.edges))
    by_genre = tuple(tuple(t for t in titles if g in t.genres) for g in range(len(GENRES)))
    return World(
        titles=titles,
        users=users,
        edges=edges,
        user_cum=_cumulative(u.activity for u in users),
        title_cum=_cumulative(t.popularity for t in titles),
        genre_titles=by_genre,
        genre_cum=tuple(_cumulative(t.popularity for t in group) for group in by_genre),
        country_edges={c: edges_for(c, edges) for c, _ in COUNTRIES},
    )


def build_catalog(rng: random.Random, count: int) -> tuple[Title, ...]:
    """Movies and series episodes, popularity Zipf-like over a shuffled rank."""
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    total = sum(1.0 / r for r in ranks)
    titles: list[Title] = []
    while len(titles) < count:
        make = _movie if rng.random() < 0.35 else _series
        for name, kind, genres, minutes, year in make(rng):
            if len(titles) < count:
                i = len(titles)
                titles.append(_title(rng, i, name, kind, genres, minutes, year, 1 / ranks[i] / total))
    return tuple(titles)


def _title(
    rng: random.Random,
    i: int,
    name: str,
    kind: str,
    genres: tuple[int, ...],
    minutes: int,
    year: int,
    popularity: float,
) -> Title:
    rungs = rng.choice((4, 5, 5, 6, 6))
    return Title(
        i,
        f"title-{i:05d}",
        name,
        kind,
        genres,
        minutes * 60_000 + rng.randrange(60) * 1000,
        year,
        popularity,
        LADDER[:rungs],
        rng.choice(CODECS),
    )


def _movie(rng: random.Random) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    name = f"The {rng.choice(WORDS_A)} {rng.choice(WORDS_B)}"
    return [(name, "MOVIE", _genres(rng), rng.randint(80, 160), _year(rng))]


def _series(rng: random.Random) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    name, genres, year = f"{rng.choice(WORDS_A)} {rng.choice(WORDS_B)}", _genres(rng), _year(rng)
    minutes, season = rng.randint(20, 60), rng.randint(1, 4)
    return [
        (f"{name} S{season}E{e}", "EPISODE", genres, minutes, year) for e in range(1, rng.randint(3, 10) + 1)
    ]


def _genres(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.sample(range(len(GENRES)), rng.choice((1, 2, 2, 3))))


def _year(rng: random.Random) -> int:
    return max(1950, 2025 - int(rng.expovariate(1 / 12)))


def build_user(rng: random.Random, i: int) -> User:
    """A user with 1-4 profiles, 1-3 devices, a home country and genre tastes."""
    user_id = f"user-{i:06d}"
    country = rng.choices([c for c, _ in COUNTRIES], [w for _, w in COUNTRIES])[0]
    profiles = tuple(f"{user_id}-p{j}" for j in range(rng.choice((1, 1, 2, 2, 3, 4))))
    devices = tuple(build_device(rng, j) for j in range(rng.choice((1, 1, 2, 2, 3))))
    taste = build_taste(rng, len(GENRES))
    return User(
        i, user_id, country, profiles, devices, taste, _cumulative(taste), rng.lognormvariate(0.0, 0.75)
    )


def build_taste(rng: random.Random, genres: int) -> tuple[float, ...]:
    """A normalized weight per genre: 80% on 1-3 favourites, the rest spread evenly."""
    favourites = rng.sample(range(genres), min(genres, rng.choice((1, 2, 2, 3))))
    raw = [rng.uniform(0.5, 1.0) for _ in favourites]
    rest = 0.2 / (genres - len(favourites)) if genres > len(favourites) else 0.0
    weights = [rest] * genres
    for g, r in zip(favourites, raw, strict=True):
        weights[g] = (0.8 if rest else 1.0) * r / sum(raw)
    total = sum(weights)
    return tuple(w / total for w in weights)


def build_device(rng: random.Random, j: int) -> Device:
    kinds = list(DEVICE_TYPES)
    kind = rng.choices(kinds, [DEVICE_TYPES[k][0] for k in kinds])[0]
    _, max_rung, oses = DEVICE_TYPES[kind]
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return Device(
        j, f"dev-{rng.getrandbits(64):016x}", kind, rng.choice(oses), rng.choice(APP_VERSIONS), ip, max_rung
    )


def build_edge(rng: random.Random, i: int) -> Edge:
    pop = POPS[i % len(POPS)]
    return Edge(i, f"edge-{pop}-{i // len(POPS) + 1:02d}", pop, rng.uniform(0.9, 1.0))


def edges_for(country: str, edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
    """Edges serving ``country``: those of its preferred PoPs, else every edge."""
    preferred = tuple(e for e in edges if e.pop in COUNTRY_POPS[country])
    return preferred or edges


def _cumulative(weights: Any) -> tuple[float, ...]:
    return tuple(itertools.accumulate(weights))
