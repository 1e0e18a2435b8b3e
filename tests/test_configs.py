"""configs: one description per setting, shared by --help and the README."""

import pathlib

import configs


def test_every_setting_has_one_description_in_help():
  assert configs.HELP.keys() == configs.DEFAULTS.keys()
  text = configs.build_parser([]).format_help()
  for key, description in configs.HELP.items():
    assert f'--{key}' in text
    assert ' '.join(description.split()[:3]) in ' '.join(text.split())


def test_readme_flag_table_is_current():
  readme = (pathlib.Path(__file__).parent.parent / 'README.md').read_text()
  assert configs.flag_table() in readme, (
      'README.md: paste the output of python -c "import configs; print(configs.flag_table())"')
