"""Everything around playback: sign-ins and sign-outs, searches, and the credential-stuffing
attack of a ``login_attack`` incident. Each function is a source of time-ordered items."""

from __future__ import annotations

import re
from typing import Any

from reelpulse.simulator.incidents import Resolved
from reelpulse.simulator.model import poisson
from reelpulse.simulator.playback import Playback, plan_session
from reelpulse.simulator.records import Who
from reelpulse.simulator.run import Run, Source
from reelpulse.simulator.world import GENRES, Device, Title, User

FAILURE_REASONS = (
    (0.65, "BAD_PASSWORD"),
    (0.85, "MFA_FAILED"),
    (0.9, "ACCOUNT_LOCKED"),
    (1.0, "RATE_LIMITED"),
)
LIVING_ROOM = frozenset({"TV", "STREAMING_STICK", "CONSOLE"})
GENRE_SUFFIXES = ("", "", " movies", " series", " new", " best")
MAX_LOGIN_ATTEMPTS = 3
EPISODE = re.compile(r"s\d+e\d+")


def app_session(run: Run, t: int) -> Source:
    """A sign-in (failures and retries first, at the base failure rate), then a sign-out
    when the application session ends."""
    rng, model = run.rng, run.model
    user = run.pick_user()
    device = run.pick_device(user)
    who = run.who(user, device, session_id=run.uuid())
    method = auth_method(run, device)
    for attempt in range(1, MAX_LOGIN_ATTEMPTS + 1):
        if rng.random() >= run.config.login_failure_rate:
            break
        yield t, "login", login(run, who, t, method, failure_reason(run))
        if attempt == MAX_LOGIN_ATTEMPTS or rng.random() >= model.login_retry_probability:
            return
        t += 3000 + int(rng.random() * 15_000)
    yield t, "login", login(run, who, t, method, None)
    run.app_sessions[(user.index, device.index)] = who.session_id
    length = 1000 + int(rng.expovariate(1.0) * model.app_session_mean_s * 1000)
    yield t + length, "logout", logout(run, who, t + length, length)


def warm_logouts(run: Run, t0: int, logins_per_s: float) -> Source:
    """Sign-outs of application sessions already open when the run starts (exponential
    session lengths: the time left and the time already spent are both exponential)."""
    rng, mean_ms = run.rng, run.model.app_session_mean_s * 1000
    open_sessions = poisson(rng, logins_per_s * run.model.app_session_mean_s)
    ends = sorted(t0 + int(rng.expovariate(1.0) * mean_ms) for _ in range(open_sessions))
    for end in ends:
        user = run.pick_user()
        who = run.who(user, run.pick_device(user))
        length = end - t0 + int(rng.expovariate(1.0) * mean_ms)
        yield end, "logout", logout(run, who, end, length)


def login(run: Run, who: Who, t: int, method: str, reason: str | None) -> dict[str, Any]:
    return {
        "envelope": who.envelope(run.rng, t),
        "success": reason is None,
        "failure_reason": reason,
        "auth_method": method,
    }


def logout(run: Run, who: Who, t: int, length: int) -> dict[str, Any]:
    return {
        "envelope": who.envelope(run.rng, t),
        "session_duration_ms": length,
        "explicit": run.rng.random() < 0.35,
    }


def auth_method(run: Run, device: Device) -> str:
    r = run.rng.random()
    if device.device_type in LIVING_ROOM:
        return "TOKEN_REFRESH" if r < 0.6 else "DEVICE_CODE" if r < 0.9 else "PASSWORD"
    return "TOKEN_REFRESH" if r < 0.55 else "PASSWORD" if r < 0.85 else "SSO"


def failure_reason(run: Run) -> str:
    r = run.rng.random()
    return next(reason for bound, reason in FAILURE_REASONS if r < bound)


def search(run: Run, t: int) -> Source:
    """A catalog search (first search exposes the user to search experiments); a click
    sometimes leads to playing the clicked title a few seconds later."""
    rng, model = run.rng, run.model
    user = run.pick_user()
    device = run.pick_device(user)
    who = run.who(user, device)
    for i in run.expose(user, "search"):
        yield run.exposure(t, who, i)
    query, results, clicked, rank = search_outcome(run, user)
    yield (
        t,
        "search",
        {
            "envelope": who.envelope(rng, t),
            "query": query,
            "results_count": results,
            "clicked_title_id": clicked.title_id if clicked else None,
            "clicked_rank": rank,
        },
    )
    if clicked is not None and rng.random() < model.play_after_click_rate:
        at = t + 2000 + int(rng.random() * 8000)
        yield from Playback(run, plan_session(run, at, user, device, clicked)).events()


def search_outcome(run: Run, user: User) -> tuple[str, int, Title | None, int | None]:
    """``(query, results_count, clicked title, clicked rank)``: a genre, a title prefix
    (from the user's tastes) or, rarely, a typo with no results."""
    rng = run.rng
    r = rng.random()
    if r < 0.05:
        return _typo(run), 0, None, None
    if r < 0.35:
        genre = run.pick_genre(user)
        titles = run.world.genre_titles[genre]
        query = GENRES[genre] + GENRE_SUFFIXES[int(rng.random() * len(GENRE_SUFFIXES))]
        target = titles[int(rng.random() * len(titles))] if titles else None
        return _clicked(run, query, min(50, len(titles)), target, 0.4)
    title = run.pick_title(user)
    return _clicked(run, title_query(run, title), 1 + int(rng.random() * 12), title, 0.7)


def _clicked(
    run: Run, query: str, results: int, title: Title | None, top: float
) -> tuple[str, int, Title | None, int | None]:
    rng = run.rng
    if title is None or not results or rng.random() >= run.model.search_click_rate:
        return query, results, None, None
    rank = 1 if rng.random() < top else min(results, 2 + int(rng.expovariate(0.5)))
    return query, results, title, rank


def title_query(run: Run, title: Title) -> str:
    """What someone types looking for ``title``: its first words, the last maybe unfinished."""
    words = [w for w in title.name.lower().split() if w != "the" and not EPISODE.fullmatch(w)]
    words = words[: 1 + int(run.rng.random() * 2)] or [title.name.lower()]
    last = words[-1]
    if len(last) > 4 and run.rng.random() < 0.4:
        words[-1] = last[: 3 + int(run.rng.random() * (len(last) - 3))]
    return " ".join(words)


def _typo(run: Run) -> str:
    letters = "aeioulnrstkmpz"
    return "".join(letters[int(run.rng.random() * len(letters))] for _ in range(7))


def login_attack(run: Run, incident: Resolved) -> Source:
    """Credential stuffing: failed sign-ins from a few source IPs across many accounts,
    existing and unknown, at ``attack_share_of_rate`` of the run's rate. A rare success
    is recorded in the incident's ``compromised_users``."""
    rng, details = run.rng, incident.details
    per_ms = max(5.0, run.model.attack_share_of_rate * run.config.rate) / 1000
    bots = [_bot(run, ip) for ip in details["source_ips"]]
    t = float(incident.start_ms)
    while True:
        t += rng.expovariate(per_ms)
        if t >= incident.end_ms:
            return
        details["attempts"] += 1
        yield int(t), "login", _attempt(run, int(t), bots[int(rng.random() * len(bots))], details)


def _bot(run: Run, ip: str) -> Device:
    return Device(-1, f"dev-{run.rng.getrandbits(64):016x}", "WEB", "Linux x86_64", "7.14.0", ip, 0)


def _attempt(run: Run, t: int, bot: Device, details: dict[str, Any]) -> dict[str, Any]:
    rng, country = run.rng, details["countries"][details["source_ips"].index(bot.ip)]
    if rng.random() < 0.7:
        user = run.world.users[int(rng.random() * len(run.world.users))]
        reason: str | None = "RATE_LIMITED" if rng.random() < 0.05 else "BAD_PASSWORD"
        if rng.random() < run.model.attack_success_rate:
            reason = None
            details["compromised_users"].append(user.user_id)
    else:
        user_id = f"user-{rng.getrandbits(32):08x}"
        user = User(-1, user_id, country, (f"{user_id}-p0",), (bot,), (), (), 0.0)
        reason = "UNKNOWN_ACCOUNT"
    who = Who(user, user.profiles[0], run.uuid(), bot, country, bot.ip)
    return login(run, who, t, "PASSWORD", reason)
