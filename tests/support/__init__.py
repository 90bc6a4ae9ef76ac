"""What the tests share: real parts started by the test (moto's S3 server, Ray processes), files in the exact
release formats, synthetic images and realistic result rows. Imported as ``support.<module>`` (pytest puts
tests/ on sys.path)."""
