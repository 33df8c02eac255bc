"""A config as the Python config file that made it: `render(config)` is the source of a
file that `--config` accepts (its `get_config()` returns a ConfigDict equal to `config`),
each field with the comment that configs/default.py (and configs/methods.py, for the
method blocks) gives it; `write(config, workdir, mode)` stores it as
`WORKDIR/config/<mode>.py`, so that a run is repeated with `--config=WORKDIR/config/<mode>.py`.

The comments are read from the source of configs/default.py once (with `ast` and
`tokenize`), not imported: a field's comment lines just above its assignment and its
trailing comment. Fields in the same order as there; fields default.py lacks come after,
without a comment.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import math
import pathlib
import tokenize
from typing import Any

import ml_collections

from simclr_jax import storage

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_INDENT = "  "


@dataclasses.dataclass(frozen=True)
class Comment:
  """A field's comment in configs/default.py: the full-line comments just above its
  assignment (each with its '#') and the comment after it on the same line."""
  above: tuple[str, ...] = ()
  trailing: str = ""


def render(config: ml_collections.ConfigDict, header: str = "") -> str:
  """The Python source of a config file whose `get_config()` returns `config`.

  Args:
    config: nested ConfigDicts of None, bool, int, float, str and tuples/lists of them;
      an unset placeholder stays a typed placeholder (so `--config.x=...` still works).
    header: comment text for the top of the file (lines get a '# ').

  Raises:
    TypeError: a value that has no Python literal.
  """
  lines = [f"# {line}".rstrip() for line in header.splitlines()]
  lines += ['"""A resolved config, written by simclr_jax (simclr_jax/config_text.py); comments',
            'from configs/default.py."""', "", "import ml_collections", "", "",
            "def get_config(arg=None):", f"{_INDENT}del arg  # Takes none.",
            f"{_INDENT}config = ml_collections.ConfigDict()"]
  lines += _render_block(config, "config", "", field_comments())
  lines += [f"{_INDENT}return config", ""]
  return "\n".join(lines)


def write(config: ml_collections.ConfigDict, workdir, mode: str) -> str:
  """Writes `render(config)` to `WORKDIR/config/<mode>.py` (local or gs://, whole or not
  at all) from process 0; returns that path on every process."""
  import jax  # pylint: disable=g-import-not-at-top  Here: render() stays free of JAX.
  target = storage.path(workdir) / "config" / f"{mode}.py"
  if jax.process_index() == 0:
    storage.write_bytes(target, render(
        config, header=f"The config of the last `{mode}` run in this workdir; rerun it with "
                       f"--config={target}").encode())
  return str(target)


def _render_block(block: ml_collections.ConfigDict, variable: str, prefix: str,
                  comments: dict[str, tuple[int, Comment]]) -> list[str]:
  lines, after_block = [], False
  for key in sorted(block.keys(), key=lambda k: (comments.get(prefix + k, (math.inf,))[0], k)):
    name = prefix + key
    comment = comments.get(name, (0, Comment()))[1]
    value = block[key]
    nested = isinstance(value, ml_collections.ConfigDict)
    if comment.above or nested or after_block:
      lines.append("")
    after_block = nested
    lines += [f"{_INDENT}{line}" for line in comment.above]
    code = (f"{variable}.{key} = "
            + ("ml_collections.ConfigDict()" if nested else _literal(block, key, name)))
    lines.append(f"{_INDENT}{code}" + (f"  {comment.trailing}" if comment.trailing else ""))
    if nested:
      lines += _render_block(value, f"{variable}.{key}", name + ".", comments)
  return lines


def _literal(block: ml_collections.ConfigDict, key: str, name: str) -> str:
  """`block[key]` as Python source; an unset placeholder as `placeholder(type)`."""
  value = block[key]
  if value is None:
    reference = block._fields.get(key)  # pylint: disable=protected-access  Its type.
    if isinstance(reference, ml_collections.FieldReference):
      kind = reference.get_type()
      if kind in (str, int, float, bool, tuple, list):
        return f"ml_collections.config_dict.placeholder({kind.__name__})"
    return "None"
  return _python(value, name)


def _python(value: Any, name: str) -> str:
  if value is None or isinstance(value, (bool, int, str)):
    return repr(value)
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
  if isinstance(value, (tuple, list)):
    items = [_python(item, name) for item in value]
    if isinstance(value, list):
      return f"[{', '.join(items)}]"
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
  raise TypeError(f"config.{name} = {value!r} ({type(value).__name__}) has no Python literal "
                  f"for a config file.")


@functools.cache
def field_comments() -> dict[str, tuple[int, Comment]]:
  """Dotted field name (e.g. 'augment.image_size', 'simclr.temperature') -> (its position
  in configs/default.py, its Comment); {} where the configs folder is not at hand (an
  installed package)."""
  default = _CONFIGS / "default.py"
  if not default.exists():
    return {}
  found = {}
  for name, comment in _function_comments(default, "get_config", "config"):
    found.setdefault(name, (len(found), comment))
  return found


def _function_comments(path: pathlib.Path, function: str, root: str):
  """(dotted name, Comment) of each `root.a.b = ...` in `function` of `path`, in source
  order; a block made by another configs module's function (`methods.simclr()`) is
  followed into it, its docstring's first paragraph the block's comment when it has none."""
  source = path.read_text()
  comments = _comments_by_line(source)
  tree = ast.parse(source)
  body = next(node for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name == function)
  for statement, names in _assignments(body.body, root):
    above, trailing = _above(comments, statement.lineno), comments.get(statement.end_lineno)
    comment = Comment(tuple(above), trailing[0] if trailing and not trailing[1] else "")
    call = statement.value if isinstance(statement, ast.Assign) else None
    inner = None
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)):
      inner = _CONFIGS / f"{call.func.value.id}.py"
      if not inner.exists():
        inner = None
      elif not comment.above and not comment.trailing:
        comment = _docstring_comment(inner, call.func.attr)
    for index, name in enumerate(names):
      # A loop's comment (above the `for`) describes all its blocks: given to the first.
      yield name, comment if index == 0 else Comment()
      if inner is not None:
        yield from ((f"{name}.{field}", field_comment) for field, field_comment in
                    _function_comments(inner, call.func.attr,
                                       _block_variable(inner, call.func.attr)))


def _assignments(statements, root: str):
  """(statement, [dotted names]) of each assignment to an attribute of `root`; one
  `root.a[v] = ...` in `for v in ('x', 'y')` gives a.x and a.y (the statement: the loop)."""
  for statement in statements:
    if isinstance(statement, ast.For) and isinstance(statement.iter, ast.Tuple):
      values = [element.value for element in statement.iter.elts
                if isinstance(element, ast.Constant)]
      for inner in statement.body:
        if isinstance(inner, ast.Assign) and isinstance(statement.target, ast.Name):
          names = [_dotted(inner.targets[0], root, {statement.target.id: value})
                   for value in values]
          if all(names):
            yield statement, names
    elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
      name = _dotted(statement.targets[0], root, {})
      if name:
        yield statement, [name]


def _dotted(target, root: str, loop: dict[str, str]) -> str | None:
  parts = []
  while True:
    if isinstance(target, ast.Attribute):
      parts.append(target.attr)
      target = target.value
    elif (isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Name)
          and target.slice.id in loop):
      parts.append(loop[target.slice.id])
      target = target.value
    elif isinstance(target, ast.Name) and target.id == root and parts:
      return ".".join(reversed(parts))
    else:
      return None


def _comments_by_line(source: str) -> dict[int, tuple[str, bool]]:
  """Line -> (its comment, whether the comment is the whole line)."""
  found, code_lines = {}, set()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      found[token.start[0]] = (token.string, token.start[0] not in code_lines)
    elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
      code_lines.update(range(token.start[0], token.end[0] + 1))
  return found


def _above(comments: dict[int, tuple[str, bool]], line: int) -> list[str]:
  above = []
  while (line - 1) in comments and comments[line - 1][1]:
    line -= 1
    above.insert(0, comments[line][0])
  return above


def _block_variable(path: pathlib.Path, function: str) -> str:
  """The variable a configs function builds its block in (`block = ConfigDict()`)."""
  body = next(node for node in ast.parse(path.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name == function).body
  return next((s.targets[0].id for s in body if isinstance(s, ast.Assign)
               and isinstance(s.targets[0], ast.Name)), "block")


def _docstring_comment(path: pathlib.Path, function: str) -> Comment:
  node = next(node for node in ast.parse(path.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name == function)
  paragraph = (ast.get_docstring(node) or "").split("\n\n")[0]
  return Comment(tuple(f"# {line.strip()}" for line in paragraph.splitlines() if line.strip()))
