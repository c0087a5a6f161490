import pytest

from sparkdl.errors import ConfigError
from sparkdl.session import find_java, is_local_master


def test_missing_java_says_how_to_install(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install -y openjdk-17-jre-headless"):
        find_java({"PATH": str(tmp_path)})


def test_bad_java_home_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"JAVA_HOME={tmp_path} has no executable bin/java"):
        find_java({"JAVA_HOME": str(tmp_path), "PATH": ""})


def test_java_found_on_path(tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_java({"PATH": str(tmp_path)}) == str(fake)
    (tmp_path / "bin").mkdir()
    home_java = tmp_path / "bin" / "java"
    home_java.write_text("#!/bin/sh\n")
    home_java.chmod(0o755)
    assert find_java({"JAVA_HOME": str(tmp_path), "PATH": ""}) == str(home_java)


@pytest.mark.parametrize(
    "master, local",
    [("local", True), ("local[2]", True), ("local[*]", True), ("local-cluster[2,1,1024]", True), ("spark://h:7077", False), ("yarn", False)],
)
def test_is_local_master(master, local):
    assert is_local_master(master) is local
