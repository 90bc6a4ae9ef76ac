"""What the tests share: study files built from dicts and the run CLI (``studies``), real parts started by the
test (moto's S3 server, Ray processes), files in the exact release formats, synthetic images and realistic result
rows. Imported as ``support.<module>`` (pytest puts tests/ on sys.path). Each module of raystudy with logic has
its test module ``tests/test_<module>.py`` (a few cover a family of modules: ``test_faults*.py`` the driver's
faults through Ray)."""
