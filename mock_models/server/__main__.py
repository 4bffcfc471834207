from mock_models.server.main import serve_command

serve_command(prog_name="python -m mock_models.server")
