"""Fault drill: the relay restarts mid-session. With the same --secret-file, the creator
re-opens its room under the same code and the member resumes, without user_left churn."""

from __future__ import annotations

from test_api_rooms import last_users, make_client


def test_relay_restart_everyone_back_in_the_same_room(relay, recorder, members, tmp_path):
    secret = tmp_path / "relay.secret"
    first = relay("--secret-file", str(secret))
    url = first.url
    host = make_client(recorder, "host")
    host.create_relay_room("host", url)
    (code,) = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")[0]
    members.start(url, code.lower(), "mia")
    both = ["host", "mia"]
    recorder.wait_for(lambda: last_users(recorder, "mia") == both, 20, "mia joined")
    recorder.wait_for(lambda: last_users(recorder, "host") == both, 20, "host sees mia")
    mark = len(recorder.events)

    code_at_exit, _ = first.terminate(timeout=5)
    assert code_at_exit == 0
    relay("--secret-file", str(secret), "--port", str(first.port))

    def back_together():
        later = recorder.events[mark:]
        seen = {name for name, what, args in later if what == "users" and sorted(args[0]) == both}
        return host.is_connected and seen == {"host", "mia"}

    recorder.wait_for(back_together, 10, "both back in the room within 10 s")
    assert host.room_code == code
    later = recorder.events[mark:]
    assert not [e for e in later if e[1] in ("user_left_room", "user_joined_room", "error")]
    assert not [e for e in later if e[1] in ("room_created", "room_joined")]
