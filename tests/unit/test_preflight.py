"""Preflight refuses what would only fail once Ray or training is under way."""

from __future__ import annotations

from simulations.preflight import ray_socket_problems


def test_a_ray_temp_dir_too_long_for_its_sockets_is_refused_up_front() -> None:
    assert ray_socket_problems({}) == []  # the default, /tmp
    assert ray_socket_problems({"RAY_TMPDIR": "/tmp/ray-abc"}) == []
    long = "/tmp/" + "x" * 60
    [problem] = ray_socket_problems({"RAY_TMPDIR": long})
    assert "RAY_TMPDIR" in problem and "shorter" in problem
