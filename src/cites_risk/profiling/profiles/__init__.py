"""Rule profiles: validated models, vectorised evaluation, store, watch-lists, analytics."""

from __future__ import annotations

from cites_risk.profiling.profiles.evaluate import evaluate, hit_column, profile_expr
from cites_risk.profiling.profiles.model import (
    Condition,
    EntityKind,
    Group,
    Lane,
    Profile,
    ProfileError,
    load_profiles_yaml,
    parse_profile,
    starter_profiles,
)
from cites_risk.profiling.profiles.repository import (
    ProfileConflictError,
    ProfileRepository,
    SaveResult,
    StoredProfile,
)
from cites_risk.profiling.profiles.watchlist import (
    WatchlistEntry,
    WatchlistIndex,
    WatchlistRepository,
    WatchMatch,
    entity_key,
)

__all__ = [
    "Condition",
    "EntityKind",
    "Group",
    "Lane",
    "Profile",
    "ProfileConflictError",
    "ProfileError",
    "ProfileRepository",
    "SaveResult",
    "StoredProfile",
    "WatchMatch",
    "WatchlistEntry",
    "WatchlistIndex",
    "WatchlistRepository",
    "entity_key",
    "evaluate",
    "hit_column",
    "load_profiles_yaml",
    "parse_profile",
    "profile_expr",
    "starter_profiles",
]
