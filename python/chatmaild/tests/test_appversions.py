import json

import pytest

from chatmaild.appversions import AppVersionsError, load, validate

GOOD = {
    "clients": [
        {
            "clientId": "deltachat",
            "sources": [
                {
                    "sourceId": "gplay",
                    "versionInteger": 754,
                    "versionString": "2.57.0",
                    "downloadUrl": "https://download.delta.chat/android/example.apk",
                }
            ],
        }
    ]
}


def with_source(**changes):
    data = json.loads(json.dumps(GOOD))
    data["clients"][0]["sources"][0].update(changes)
    return data


def test_a_valid_index_is_served_as_compact_single_line_json(tmp_path):
    path = tmp_path / "appversions.json"
    path.write_text(json.dumps(GOOD, indent=2))
    served = load(path)
    assert "\n" not in served and " " not in served
    assert json.loads(served) == GOOD


def test_no_file_configured_means_the_key_is_not_offered():
    assert load(None) is None


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "top level"),
        ({"clients": []}, "clients"),
        (with_source(versionInteger=True), "versionInteger"),
        (with_source(versionInteger=2**32), "versionInteger"),
        (with_source(versionString=""), "versionString"),
        (with_source(downloadUrl="https://example.org/x.apk"), "downloadUrl"),
        (with_source(extra=1), "sources[0]"),
    ],
)
def test_schema_errors_name_the_field(data, field):
    with pytest.raises(AppVersionsError, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate(data)


def test_a_broken_file_is_refused_with_an_error_and_not_served(tmp_path, caplog):
    path = tmp_path / "appversions.json"
    path.write_text(json.dumps(with_source(versionInteger="754")))
    assert load(path) is None
    assert "versionInteger" in caplog.text


def test_duplicate_client_ids_are_refused():
    data = json.loads(json.dumps(GOOD))
    data["clients"].append(data["clients"][0])
    with pytest.raises(AppVersionsError, match="appears twice"):
        validate(data)
