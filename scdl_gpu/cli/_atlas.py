"""``scdl-gpu atlas create | add | info``: many archives trained as one, with one gene vocabulary."""

from __future__ import annotations

MATERIALIZE_HELP = ("also store each flat member's columns mapped onto the vocabulary (members whose genes all "
                    "stay, in order): batches then skip the per-value map lookup; costs one column file per member")


def register(sub) -> None:
    p = sub.add_parser("atlas", help="many archives as one dataset: create, add members, inspect",
                       description="An atlas is a directory with a manifest (atlas.json) listing member archives and "
                       "how each one's genes map onto one vocabulary. Members are never rewritten.")
    cmds = p.add_subparsers(dest="atlas_command", metavar="ACTION", required=True)

    c = cmds.add_parser("create", help="make DIR an atlas of MEMBERS (archive directories)")
    c.add_argument("atlas", metavar="DIR")
    c.add_argument("members", nargs="+", metavar="MEMBER")
    c.add_argument("--gene-vocab", default="union",
                   help="'union' (default), 'intersection', or a file with one gene id per line")
    c.add_argument("--gene-key", help="the var column holding gene ids (default: the var names stored at conversion)")
    c.add_argument("--name", action="append", dest="names", metavar="NAME",
                   help="a member's name, once per member in order (default: each directory's name)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing manifest in DIR")
    c.add_argument("--materialize", action="store_true", help=MATERIALIZE_HELP)
    c.set_defaults(handler=create)

    a = cmds.add_parser("add", help="add MEMBERS to the atlas DIR (rewrites only the manifest)")
    a.add_argument("atlas", metavar="DIR")
    a.add_argument("members", nargs="+", metavar="MEMBER")
    a.add_argument("--name", action="append", dest="names", metavar="NAME", help="a member's name, once per member")
    a.add_argument("--materialize", action="store_true", help=MATERIALIZE_HELP)
    a.set_defaults(handler=add)

    i = cmds.add_parser("info", help="rows, genes and members of an atlas")
    i.add_argument("atlas", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(handler=info)


def create(args) -> int:
    from ..atlas import create_atlas

    atlas = create_atlas(args.atlas, args.members, gene_vocab=args.gene_vocab, gene_key=args.gene_key,
                         names=args.names, overwrite=args.overwrite, materialize=args.materialize)
    print(f"{args.atlas}: atlas of {len(atlas.members)} member{'s' * (len(atlas.members) != 1)}, "
          f"{atlas.n_rows:,} rows, {atlas.n_genes:,} genes ({atlas.vocab_mode})")
    _materialized(atlas, args.materialize)
    return 0


def _materialized(atlas, asked: bool) -> None:
    if asked:
        skipped = [m.name for m in atlas.members if m.mapped_columns is None]
        print(f"columns materialized for {len(atlas.members) - len(skipped)} of {len(atlas.members)} members"
              + (f" (not for {', '.join(skipped)}: chunked, or genes dropped or reordered by the vocabulary)"
                 if skipped else ""))


def add(args) -> int:
    from ..atlas import add_members

    atlas = add_members(args.atlas, args.members, names=args.names, materialize=args.materialize)
    print(f"{args.atlas}: {len(atlas.members)} members, {atlas.n_rows:,} rows, {atlas.n_genes:,} genes")
    _materialized(atlas, args.materialize)
    return 0


def summary(atlas, path=None) -> dict:
    """The atlas's facts; ``path`` names it (default: its directory)."""
    return dict(
        path=str(atlas.root if path is None else path), n_rows=atlas.n_rows, n_genes=atlas.n_genes, n_values=atlas.n_values,
        vocab_mode=atlas.vocab_mode, gene_key=atlas.gene_key, obs_schema=atlas.obs_schema,
        members=[dict(name=m.name, path=m.path, n_rows=m.n_rows, n_genes=m.n_genes, genes_kept=m.kept,
                      n_values=m.n_values, data_dtype=m.data_dtype, checksum=m.checksum,
                      mapped_columns=m.mapped_columns) for m in atlas.members],
    )


def info(args) -> int:
    return show(args.atlas, args.json)


def show(path, as_json: bool = False) -> int:
    """Print an atlas's summary (``scdl-gpu atlas info`` and ``scdl-gpu info`` on an atlas, local or
    at a URL: then only its manifest is read)."""
    import json

    from ..archive._urls import is_url
    from ..atlas import RemoteAtlas, open_atlas

    if is_url(path):
        with RemoteAtlas(path, open_members=False) as remote:
            s = summary(remote.atlas, remote.url)
    else:
        s = summary(open_atlas(path))
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"atlas:    {s['path']}")
    print(f"rows:     {s['n_rows']:,} in {len(s['members'])} members")
    print(f"genes:    {s['n_genes']:,} ({s['vocab_mode']}" + (f", matched by var column {s['gene_key']!r})" if s["gene_key"] else ")"))
    print(f"values:   {s['n_values']:,}")
    if s["obs_schema"]:
        print("obs:      " + ", ".join(f"{k} ({v})" for k, v in s["obs_schema"].items()))
    width = max(len(m["name"]) for m in s["members"])
    print("members:")
    for m in s["members"]:
        print(f"  {m['name']:<{width}}  {m['n_rows']:>12,} rows  {m['genes_kept']:>7,}/{m['n_genes']:<7,} genes kept  "
              f"{m['data_dtype']:<8} {m['path']}" + ("  [columns materialized]" if m["mapped_columns"] else ""))
    return 0
