from rybbit import create_app

app = create_app()
