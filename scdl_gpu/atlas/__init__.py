"""Atlases: many member archives trained as one dataset, with one gene vocabulary.

An atlas is a directory with a manifest (``atlas.json``) listing member archives, their row
counts and checksums, one gene vocabulary and each member's column map onto it. Members are
never rewritten: alignment happens at load time. This layer knows nothing of torch or CuPy.
An atlas at a URL opens read-only as a :class:`RemoteAtlas`.
"""

from ._create import add_members, create_atlas
from ._manifest import MANIFEST, Atlas, AtlasMember, archives_of, is_atlas, read_manifest
from ._remote import RemoteAtlas, is_remote_atlas

open_atlas = read_manifest

__all__ = ["MANIFEST", "Atlas", "AtlasMember", "RemoteAtlas", "add_members", "archives_of", "create_atlas", "is_atlas",
           "is_remote_atlas", "open_atlas"]
