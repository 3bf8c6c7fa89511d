"""The README's Python example (sharing a semaphore through Redis) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.coordination import Coordinator

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.redis


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [b for b in blocks if "Coordinator.connect" in b]
    return example


async def test_the_readme_example_shares_a_semaphore(redis_url: str) -> None:
    setup = await Coordinator.connect(redis_url, replica_id="setup")
    await setup.registry.create("image-generation-global", 1)
    code = readme_python_example().replace("redis://redis:6379/0", redis_url)
    code = code.replace("asyncio.run(main())", "")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    await namespace["main"]()  # type: ignore[operator]
    view = await setup.registry.view("image-generation-global", detail=True)
    assert view.in_use == 0 and view.counters["acquired"] == 1
    await setup.close()
